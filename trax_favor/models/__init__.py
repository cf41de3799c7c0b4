"""Model builders that reuse Trax's reversible and chunking primitives."""

from trax_favor.models.parallel import SequenceParallel
from trax_favor.models.parallel import sequence_parallel
from trax_favor.models.performer import PerformerBlock
from trax_favor.models.performer import PerformerLM
