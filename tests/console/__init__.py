"""The console through a real headless Chromium against a real hub (issue 20)."""
