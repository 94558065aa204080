"""Labelling by people: query rounds written for annotators and their masks read back (``query_round``);
the rounds as CVAT and Label Studio tasks and those tools' exports read back (``exports``, ``cvat``,
``label_studio``, ``answers``)."""
