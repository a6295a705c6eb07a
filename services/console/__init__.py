"""The console for people (port 8084): data stewards resolve the patient index's possible
matches and undo wrong links; a health commission (a region viewer) and a hospital (a
hospital viewer) see recognition figures; everyone signed in sees the services' state.

It is a plain aiohttp application with server-side Jinja2 pages, not a faust worker: it
keeps no state of its own beyond the signed-in session (an encrypted cookie) and asks the
services over their HTTP APIs (the patient index's steward API with the console's steward
token and the person's name in ``X-Steward``), or reads the hub's topics (figures,
timelines). Every view of a patient is recorded on ``mrhub.audit.access-recorded.v1``
before the page is answered. docs/console.md is the guide.
"""
