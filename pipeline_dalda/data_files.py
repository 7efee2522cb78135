"""Files that ship beside the packages rather than inside them: the pipeline's model card (`model_card.md`, at the
top of the repository) and the `evaluate` modules (`scripts/metrics/<name>`).

A source checkout has them in the repository; `pip install .` copies them to `<sys.prefix>/share/dalda/` (pyproject's
data-files; `pip install --user` to `<user base>/share/dalda/`), where an installed `dalda` finds them.
"""

import site
import sys
from pathlib import Path


REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root when the package runs from a checkout (in an installed dalda: site-packages)."""


def data_file(checkout_path: str, installed_path: str, what: str) -> Path:
    """
    Where a shipped file or folder is: `<repository root>/<checkout_path>` in a checkout, else
    `<sys.prefix>/share/dalda/<installed_path>`.

    Raises:
        FileNotFoundError: naming `what` and both places looked in.
    """
    checkout = REPOSITORY_ROOT / checkout_path
    if checkout.exists():
        return checkout
    installed = [Path(prefix, "share", "dalda", installed_path) for prefix in (sys.prefix, site.getuserbase())]
    for path in installed:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"No {what}: looked in {checkout} (a source checkout) and {', '.join(map(str, installed))} (an installed dalda)."
    )
