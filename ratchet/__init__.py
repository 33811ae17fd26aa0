"""The ground floor every Ratchet package stands on: the ``ratchet`` command's
root, the settings base, the database helpers and migration runner, the env file.

It imports no other Ratchet package (see ARCHITECTURE.md)."""
