# The counters of an hcemu.events.Events as C rows, for the wrappers whose kernels add events
# (docs/events.md): one check of ``events.counts`` before any pointer into it is used.
from hcemu.events import FIELDS as _FIELDS
from libc.stdint cimport int64_t
cimport numpy as cnp

cnp.import_array()

cdef Py_ssize_t _N_FIELDS = len(_FIELDS)


cdef int64_t *_event_counts(events, Py_ssize_t regions) except NULL:
    """``events.counts`` as a C array: it must be a writeable C-contiguous int64 array of shape
    (at least ``regions``, len(FIELDS)), rows ``_N_FIELDS`` apart."""
    counts = events.counts
    if (not cnp.PyArray_Check(counts) or cnp.PyArray_TYPE(<cnp.ndarray>counts) != cnp.NPY_INT64
            or cnp.PyArray_NDIM(<cnp.ndarray>counts) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>counts)
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>counts)):
        raise TypeError("events.counts must be a writeable C-contiguous int64 (regions, fields) array")
    cdef Py_ssize_t rows = cnp.PyArray_DIM(<cnp.ndarray>counts, 0), cols = cnp.PyArray_DIM(<cnp.ndarray>counts, 1)
    if rows < regions or cols != _N_FIELDS:
        raise ValueError(f"events.counts of shape {(rows, cols)} does not hold {regions} regions of "
                         f"{_N_FIELDS} fields")
    return <int64_t *>cnp.PyArray_DATA(<cnp.ndarray>counts)


cdef int64_t *_event_row(events, region) except NULL:
    """The int64 counters of ``region`` (a layer index, "head" or "embed") in ``events.counts``."""
    cdef Py_ssize_t ri = events.region_index(region)
    return _event_counts(events, ri + 1) + ri * _N_FIELDS
