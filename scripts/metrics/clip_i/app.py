from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget


# The script beside this file, so the Space runs whichever namespace it is pushed to.
module = evaluate.load(str(Path(__file__).with_name("clip_i.py")))
launch_gradio_widget(module)
