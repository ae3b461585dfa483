"""Training data: format readers (every record becomes a Sample or a Skipped) and skip accounting."""

from owl.data.formats import count_records, iter_source, parse_mplug_text
from owl.data.skipstats import SkipStats
from owl.data.source import FORMATS, Skipped, SourceSpec

__all__ = ["FORMATS", "SkipStats", "Skipped", "SourceSpec", "count_records", "iter_source", "parse_mplug_text"]
