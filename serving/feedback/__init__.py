"""The feedback API: ratings, A/B comparisons and corrections on replies, as events."""
