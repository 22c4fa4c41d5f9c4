"""Desired vs observed -> actions. Planning is pure; executors call into `isolation`."""
