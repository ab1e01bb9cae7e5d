"""lab2: LoRA fine-tuning of a small LLM as a course lab, done properly.

Read in this order to follow one experiment from its YAML to its metrics.json:
config.py -> backend.py -> data.py -> modeling.py -> train.py (sweep.py has notebook_runner.py run
notebooks/train.ipynb per file).
"""

__version__ = "0.1.0"
