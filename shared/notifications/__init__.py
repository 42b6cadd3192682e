"""Notifications: signed webhooks the owner registers, and the events sent to them (`notify`)."""
