"""`mrhub simulate`: a hospital region in a box (docs/simulate.md)."""
