"""``make demo``: the whole Ratchet loop on this machine (``python -m infra.demo``).

Steps: database and base model, knowledge base, API and consumer in the
background, simulated employees giving feedback, one training cycle with its
gates, promotion and hot swap, held-out questions before and after, and a
report under ``$RATCHET_HOME/demo/``. See :mod:`infra.demo.driver`.
"""
