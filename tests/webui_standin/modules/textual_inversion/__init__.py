"""Stand-in for modules/textual_inversion/."""
