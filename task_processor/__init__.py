"""The module names that applications written for Flagsmith's task processor import.

Each module re-exports this project's own API under the reference's module name, so that
``from task_processor.decorators import register_task_handler`` works unchanged. There is no
second implementation here; see docs/migrating-from-flagsmith.md for what differs.
"""
