"""Example tasks and a script that enqueues them; run from the checkout's root."""
