"""A toy shop whose session code has two bugs, for the pylivepatch example."""
