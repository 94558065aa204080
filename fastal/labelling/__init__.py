"""Labelling by people: query rounds written for annotators and their masks read back (``query_round``)."""
