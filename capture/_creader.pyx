# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The pcap record loop, compiled: :meth:`capture.reader.CaptureFile._pcap_python`'s loop in C.

Same frames and the same damage reports (the tests compare both on every capture, damaged ones
included). In the interpreter each record costs an unpack into a tuple of four ints, the
timestamp's arithmetic and a generator step (~0.6 us); here ~0.3 us, in both processes of a
file read. ``run.sh`` builds it with :mod:`capture._cparse`.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize


cdef inline unsigned int _le32(const unsigned char* p) noexcept nogil:
    return p[0] | (p[1] << 8) | (p[2] << 16) | (<unsigned int>p[3] << 24)


cdef inline unsigned int _be32(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]


def pcap_records(object buf, bint little, object linktype, double scale, object info,
                 object frame_type, Py_ssize_t max_record):
    """Yield ``frame_type(ts, data, orig_len, linktype, 0)`` for each record after the
    24-byte file header; damage ends the iteration with ``info.damage`` set."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t off = 24, end, incl
    cdef unsigned int sec, frac, orig
    # The buffer (the file's map) stays exported while the generator lives: CaptureFile.close
    # then leaves the map to be freed with it, as it does when frames still reference it.
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        end = view.len
        while off < end:
            if end - off < 16:
                info.damage = f"truncated record header after {info.packets} packets"
                return
            if little:
                sec = _le32(p + off)
                frac = _le32(p + off + 4)
                incl = _le32(p + off + 8)
                orig = _le32(p + off + 12)
            else:
                sec = _be32(p + off)
                frac = _be32(p + off + 4)
                incl = _be32(p + off + 8)
                orig = _be32(p + off + 12)
            if incl > max_record:
                info.damage = f"corrupt record length {incl} after {info.packets} packets"
                return
            off += 16
            if end - off < incl:
                info.damage = f"truncated packet data after {info.packets} packets"
                return
            data = PyBytes_FromStringAndSize(<const char*>(p + off), incl)
            off += incl
            info.packets += 1
            yield frame_type(sec + frac * scale, data, orig, linktype, 0)
    finally:
        PyBuffer_Release(&view)
