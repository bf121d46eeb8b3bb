"""`compressor sparsify q.pt --out s.pt`: swap layers to the sparse kernels where this machine
measured them faster (batch --batch-size, --threads threads), never slower as a whole."""

from compressor.commands.common import (
    add_input,
    add_output,
    add_threads,
    check_batch_size,
    check_out,
    read_input,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.io import check_cache_writable
from compressor.pipeline.stages import sparsify_stage
from compressor.sparse import SparsifyConfig


def add_arguments(parser):
    add_input(parser)
    add_flags(parser, SparsifyConfig)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="rows of the example input the decisions are measured on")
    add_output(parser)
    add_threads(parser)


def run(args) -> int:
    cfg = from_args(SparsifyConfig, args)
    check_batch_size(args)
    check_out(args)
    check_cache_writable()  # the measured timings are cached there
    threads = set_threads(args)
    model, info, data, data_cfg = read_input(args)
    metrics = sparsify_stage(model, data, cfg, args.batch_size)
    for name, row in metrics["layers"].items():
        print(f"  {name:<32} sparsity {row['sparsity']:.2f}  measured {row['speedup']:.2f}x "
              f"-> {row['action']}")
    print(f"{metrics['sparse_layers']} of {len(metrics['layers'])} layers on sparse kernels "
          f"(batch {args.batch_size}, {threads} threads); test accuracy {metrics['test_acc']:.4f}")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"], stage="sparsify")
    return 0
