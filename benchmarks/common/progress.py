"""tqdm progress bars when tqdm is installed (make bench-deps); a plain iterator otherwise, so the
smoke tests and CI need no tqdm."""


def progress_bar(iterable, desc: str = "", enabled: bool = True, total=None, leave: bool = True):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
