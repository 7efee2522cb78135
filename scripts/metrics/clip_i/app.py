from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget


# The one module script beside this file, whatever its name: `dalda metrics-repo` names it as the Space it is pushed
# to (evaluate.load("<org>/<name>") fetches `<name>.py`), so this file goes to every Space unchanged.
(script,) = [path for path in Path(__file__).parent.glob("*.py") if path.name != Path(__file__).name]
module = evaluate.load(str(script))
launch_gradio_widget(module)
