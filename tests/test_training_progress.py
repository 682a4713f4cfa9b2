"""Progress of long stages: plain lines in a log (first, then at most every 30 s, and the last), nothing
from other ranks; the rule train and likeness share."""

from __future__ import annotations

import torch

from training.distributed import Place
from training.progress import Progress


def test_in_a_log_progress_is_a_few_plain_lines_from_rank_0_only(capsys):
    progress = Progress(3, "score", Place(0, 2, 0, torch.device("cpu")), stage="likeness")
    for _ in range(3):
        progress.update()
    progress.close()
    Progress(3, "score", Place(1, 2, 1, torch.device("cpu")), stage="likeness").update()
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws: stderr is not a terminal here
    assert err.splitlines() == ["likeness: score 1/3", "likeness: score 3/3"]
