"""Fitting operation costs from live traces, black-box demands, and validation against live servers."""
