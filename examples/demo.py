"""Embedded demo: GRPO on the toy task with reverse KL (k3), forward KL (full) and JS (full), side by side.

python examples/demo.py                      # the embedded tiny model and task (CPU, a few minutes)
python examples/demo.py --model NAME_OR_DIR --dataset NAME_OR_DIR --reward pkg.module:fn
"""

from trl_divergences.demo import main

if __name__ == "__main__":
    main()
