"""Ends a distributed worker (gloo or nccl) after its work has finished and been checked.

torch's gloo backend can abort a process at exit ("terminate called without an active
exception", SIGABRT): its worker threads still hold work objects while the interpreter finalises,
and a joinable std::thread's destructor calls std::terminate (pytorch PR #179291; a pure-torch
DDP + gloo script does it too). Only call this once everything the process had to do is done
and verified: a failure before it still raises and fails the process as usual.
"""
import os
import sys

import torch.distributed as dist


def exit_after_clean_finish():
    """Barrier (no rank leaves while another still communicates), tear the group down, flush,
    then leave without running interpreter finalisers: exit status 0, and no teardown race."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
