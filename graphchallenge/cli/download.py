"""``graphchallenge download``: fetch one configuration into the data folder."""

from .. import catalog
from ..download import BASE_URL_ENV, RETRIES, WHAT, download
from . import EXIT_OK, _common

HELP = "download a configuration's network, inputs and truth (resumable, checksummed)"


def add_arguments(parser):
    parser.add_argument("--neurons", type=int, required=True, metavar="N",
                        help=f"neurons per layer ({', '.join(map(str, catalog.NEURONS))})")
    parser.add_argument("--layers", type=int, default=catalog.LAYERS[0], metavar="L",
                        help="layers to extract from the network tarball, and the depth whose "
                             f"truth file is fetched (default {catalog.LAYERS[0]})")
    _common.add_data_dir(parser)
    add_source_arguments(parser)
    _common.add_quiet(parser)
    _common.add_json(parser)


def add_source_arguments(parser):
    """``--base-url``, ``--what`` and ``--retries`` (shared with scripts/download_datasets.py)."""
    parser.add_argument("--base-url", metavar="URL",
                        help=f"server or mirror (default: ${BASE_URL_ENV}, "
                             f"else {catalog.BASE_URL})")
    parser.add_argument("--what", type=_names, default=None, metavar="LIST",
                        help=f"comma-separated subset of {','.join(WHAT)} (default: all; the "
                             "truth only for the published depths 120, 480, 1920)")
    parser.add_argument("--retries", type=int, default=RETRIES, metavar="K",
                        help="retries after a dropped connection or a server error "
                             f"(default {RETRIES})")


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    report = download(cfg, _common.resolve_data_dir(args), base_url=args.base_url,
                      what=args.what, progress=_common.progress(args), retries=args.retries)
    _common.emit(args, report.to_dict(), report.summary())
    return EXIT_OK
