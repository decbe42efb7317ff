/* Decode one rectangle of a JPEG: the part of a camera-trap photo its crops read.
 *
 * Pillow decodes every pixel of a JPEG. A classifier only needs the few
 * squares around the animals, so this decodes their bounding rectangle alone
 * with libjpeg-turbo: rows above it are entropy-decoded and dropped without an
 * inverse DCT (`jpeg_skip_scanlines`), columns outside it are never
 * transformed (`jpeg_crop_scanline`), and decoding stops below it. Pixels
 * inside the rectangle are the ones a full decode gives (same library
 * defaults as Pillow: accurate integer DCT, fancy upsampling).
 *
 * decode(data, scale, left, top, right, bottom) -> (pixels, left, top, width, height, truncated)
 *   data: the JPEG file's bytes; scale: 1, 2, 4 or 8, the DCT scale denominator;
 *   the rectangle is in pixels of the image as scaled, right/bottom exclusive.
 *   libjpeg widens it on the left to a block boundary, so the actual left and
 *   width come back; pixels is height * width * 3 bytes of RGB.
 *   truncated: the file ended early (libjpeg filled the rest in grey).
 * Raises ValueError with libjpeg's message for a file it cannot decode.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>

struct error_manager {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated;
};

static void on_error(j_common_ptr cinfo)
{
    longjmp(((struct error_manager *)cinfo->err)->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level)
{
    /* level -1 is a warning. Only the early end of file matters to callers;
     * Pillow passes the other recoverable warnings silently, and so does this. */
    struct error_manager *err = (struct error_manager *)cinfo->err;
    if (level == -1 && err->pub.msg_code == JWRN_JPEG_EOF)
        err->truncated = 1;
}

static PyObject *decode(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data;
    int scale, left, top, right, bottom;
    if (!PyArg_ParseTuple(args, "y*iiiii", &data, &scale, &left, &top, &right, &bottom))
        return NULL;
    if (!(scale == 1 || scale == 2 || scale == 4 || scale == 8) || left < 0 || top < 0
        || right <= left || bottom <= top) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "scale must be 1, 2, 4 or 8 and the rectangle non-empty");
        return NULL;
    }

    struct jpeg_decompress_struct cinfo;
    struct error_manager err;
    /* Written after setjmp and read after a longjmp back to it: volatile. */
    PyObject *volatile pixels = NULL;
    PyThreadState *volatile released = NULL;
    JDIMENSION x0 = 0, width = 0, y0 = 0, height = 0;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.truncated = 0;
    if (setjmp(err.jump)) {
        char message[JMSG_LENGTH_MAX];
        (*err.pub.format_message)((j_common_ptr)&cinfo, message);
        if (released)
            PyEval_RestoreThread(released);
        jpeg_destroy_decompress(&cinfo);
        Py_XDECREF(pixels);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, message);
        return NULL;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);

    released = PyEval_SaveThread();
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale;
    jpeg_start_decompress(&cinfo);  /* a progressive file is read whole here */
    /* Clamp the rectangle to the scaled image, then let libjpeg align it. */
    if ((JDIMENSION)right > cinfo.output_width)
        right = (int)cinfo.output_width;
    if ((JDIMENSION)bottom > cinfo.output_height)
        bottom = (int)cinfo.output_height;
    if (left >= right || top >= bottom)
        ERREXIT(&cinfo, JERR_BAD_CROP_SPEC);
    x0 = (JDIMENSION)left;
    width = (JDIMENSION)(right - left);
    y0 = (JDIMENSION)top;
    height = (JDIMENSION)(bottom - top);
    if (width < cinfo.output_width)
        jpeg_crop_scanline(&cinfo, &x0, &width);
    PyEval_RestoreThread(released);
    released = NULL;

    pixels = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)width * height * 3);
    if (pixels == NULL) {
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        return NULL;
    }
    released = PyEval_SaveThread();
    if (y0 > 0 && jpeg_skip_scanlines(&cinfo, y0) != y0)
        ERREXIT(&cinfo, JERR_BAD_CROP_SPEC);
    JSAMPLE *out = (JSAMPLE *)PyBytes_AS_STRING(pixels);
    while (cinfo.output_scanline < y0 + height) {
        JSAMPROW row = out + (size_t)(cinfo.output_scanline - y0) * width * 3;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    /* Rows below the rectangle are never decoded: abort rather than finish. */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    PyEval_RestoreThread(released);
    released = NULL;
    PyBuffer_Release(&data);

    PyObject *result = Py_BuildValue("(OIIIIO)", pixels, x0, y0, width, height,
                                     err.truncated ? Py_True : Py_False);
    Py_DECREF(pixels);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, scale, left, top, right, bottom) -> (pixels, left, top, width, height, truncated)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jpeg_region",
    "Decode one rectangle of a JPEG at a DCT scale (libjpeg-turbo).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jpeg_region(void)
{
    return PyModule_Create(&module);
}
