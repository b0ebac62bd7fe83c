"""The Post-LN vs Pre-LN Transformer demo (the playbook's Figures 6, 7 and 8): model, data, training, experiment.

``model`` and ``data`` are re-exported here; ``train``, ``experiment``,
``presets`` and ``cli`` are imported from their own modules
(``optstab.transformer.train`` ...), so importing ``optstab.transformer`` stays light.
"""

from optstab.transformer.data import CharCorpus as CharCorpus
from optstab.transformer.data import CorpusNotFoundError as CorpusNotFoundError
from optstab.transformer.data import CorpusSource as CorpusSource
from optstab.transformer.data import CorpusTooSmallError as CorpusTooSmallError
from optstab.transformer.data import load_stdlib as load_stdlib
from optstab.transformer.data import load_text as load_text
from optstab.transformer.model import NORM_POSITIONS as NORM_POSITIONS
from optstab.transformer.model import Transformer as Transformer
from optstab.transformer.model import TransformerConfig as TransformerConfig
from optstab.transformer.model import create_model as create_model
from optstab.transformer.model import param_count as param_count
