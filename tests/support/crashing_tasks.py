"""A task module whose workers die as soon as they are forked: a crash loop."""

import os

os.register_at_fork(after_in_child=lambda: os._exit(3))
