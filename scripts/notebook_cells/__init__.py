"""The cell lists of the tutorial notebooks, one module per notebook (see make_notebooks.py).

``NOTEBOOKS`` maps each notebook's file stem to its cells, in reading order.
"""

from . import attention, composition, lens, own_model, patching, tour

NOTEBOOKS = {
    "00_tour": tour.CELLS,
    "01_attention_and_induction": attention.CELLS,
    "02_logit_lens_and_dla": lens.CELLS,
    "03_composition": composition.CELLS,
    "04_patching_ioi": patching.CELLS,
    "05_your_own_model": own_model.CELLS,
}
