"""Markdown reports with PNG figures from sweep results (JSONL), read from the files alone.

:func:`write_report` turns one or more results files into ``report.md`` and ``figures/*.png``:

1. **Table 1** (the paper's Table 1): one pivot per (grouping, group, p, n), rows eps, columns
   the metric after random corruption (mean ± std over trials), after gradient-based (and
   multi-step) corruption, and the loss changes; the ``*`` convention marks values close to
   the original (see below).
2. **Heatmaps** group × eps (the paper's Figures 4, 5 and 7), one per (grouping, method, p, n):
   the colour is the metric's damage (its drop, in display units), warmer = more damage.
3. **Curves** of the metric against eps on a log axis (the paper's Figure 3): random as the
   mean with the band of the 10th to 90th percentile of the trials (:mod:`.trials`; the legend
   gives the number of trials), gradient-based (and multi-step) as lines, one panel per group.
4. **Theorem 1** (the paper's Table 3): empirical quantiles of |loss change| over the random
   trials beside the first-order quantiles eps·G·x_p of Theorem 1, eps·G and the loss change
   of the gradient-based corruption; a table and a figure.

The ``*`` convention. The paper's Table 1 replaces a score by ``*`` when it is the original
score or "close to the original score (difference less than 0.1)", in the units the table
prints: accuracy and UAS in percent (so 0.1 *percentage points*: 87.1 (-0.2) is not starred),
log-perplexity and BLEU in their own units. We apply the same rule to the value as displayed
here — accuracy-like metrics stored as fractions in [0, 1] are shown in percent — with the
test ``|value - original| < 0.1`` on the unrounded numbers (strict, as "less than"); for the
random column the value is the mean over trials. Unlike the paper we keep the number and
append `` *`` (so nothing is hidden), and print the difference to the original, as the paper
does, on values that are not starred. (One entry of the paper's table, BLEU 35.25 (-0.08), is
unstarred although |-0.08| < 0.1; we read that as a slip and follow the stated rule.)

Rows are read tolerantly: a header line (no ``"method"`` key) is skipped, a torn last line
is ignored, and a field that is missing only drops what needs it, with a note in the report.
The loss change on the evaluation data is the row's ``loss_change``, else ``loss_after -
loss_before``; on the gradient's data ``grad_loss_after - grad_loss_before`` (the evaluation
data's where absent); the report says which it used. The metric's direction and display are
the header's record (``"metrics"``), read by name only for files written before it.

The package, by figure family: :mod:`.rows` (reading and normalising the rows),
:mod:`.display` (the metric's display, the ``*`` convention, labels), :mod:`.base` (what the
sections share), :mod:`.tables` (Table 1), :mod:`.heatmaps`, :mod:`.curves`, :mod:`.theorem1`
and :mod:`.document` (:func:`write_report`, the Markdown as a whole).
"""

from .display import STAR_THRESHOLD, MetricDisplay, metric_display, star
from .document import write_report
from .rows import load_rows
from .theorem1 import MIN_THEOREM1_TRIALS, PROBS

__all__ = [
    "PROBS",
    "STAR_THRESHOLD",
    "MIN_THEOREM1_TRIALS",
    "MetricDisplay",
    "load_rows",
    "write_report",
    "star",
    "metric_display",
]
