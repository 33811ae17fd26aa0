"""Slack adapter: the bot answers mentions and DMs in threads; 👍 / 👎 and corrections
become feedback events. ``mount_slack`` adds ``POST /slack/events`` to the API."""

from serving.slack.app import build_slack_app, mount_slack

__all__ = ["build_slack_app", "mount_slack"]
