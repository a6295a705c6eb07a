"""Pieces every mrhub service shares: settings, events, topics, identifiers, errors."""
