"""edgetune's files: what a run reads back and what it hands over.

The checkpoint (``checkpoint``), the replayable trajectory (``trajectory``, ``.etlog``), the step log
(``steplog``), sparse diffs (``sparse_diff``, ``.etdiff``), LoRA adapters (``adapters``), the framed
container ``.etlog`` and ``.etdiff`` share (``framed``), and the rules every write follows: atomic
writes (``io``), claiming an output folder (``outdir``) and refusing non-finite numbers (``finite``).
"""
