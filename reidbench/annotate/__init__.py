"""Offline annotation of datasets with local models: ``reidbench data caption``
(CLIP-SCGI captions), ``data styles`` and ``data describe`` (BDAM's style clusters and
decoupled descriptions) and ``data parse`` (LIP human-parsing maps for CCAF).

All four share :mod:`.work`: the work list over a dataset's splits, resuming, the
progress bar, Ray workers and the tally; :mod:`.vlm` holds the vision-language model
call of caption and describe; :mod:`.tiny` builds the tiny random models the tests use.
"""
