/* The per-request getters of flagwire's RequestFlags, in C.
 *
 * The same behaviour as flagwire._request._PyCore (the pure-Python fallback, used when
 * this module is not built): a memo lookup, on a miss the flag set's decider called with
 * the request's context (or RequestFlags._decide for everything else), and the type test
 * of the typed getter. Anything unusual (no variant, another type) goes back to Python,
 * to RequestFlags._mismatch. Only the hot path lives here.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *memo;     /* dict: flag key -> Assignment */
    PyObject *deciders; /* dict: flag key -> decide(context); empty until the context is built */
    PyObject *context;  /* dict, or None until built */
} CoreObject;

static PyObject *str_value;    /* "value" */
static PyObject *str_decide;   /* "_decide" */
static PyObject *str_mismatch; /* "_mismatch" */
static PyObject *str_key;      /* "key" */
static PyObject *str_default;  /* "default" */
static PyObject *type_boolean, *type_string, *type_float, *type_integer, *type_object;
static PyObject *empty_string, *zero_float, *zero_int;

/* The decision for key (a new reference), or NULL with an exception set. */
static PyObject *
core_decision(CoreObject *self, PyObject *key)
{
    PyObject *memo = self->memo;
    if (memo == NULL || !PyDict_Check(memo)) {
        PyErr_SetString(PyExc_TypeError, "RequestFlags: _memo is not initialised");
        return NULL;
    }
    PyObject *decision = PyDict_GetItemWithError(memo, key); /* borrowed */
    if (decision != NULL) {
        Py_INCREF(decision);
        return decision;
    }
    if (PyErr_Occurred()) {
        return NULL; /* an unhashable key */
    }
    PyObject *deciders = self->deciders;
    PyObject *context = self->context;
    PyObject *decide = NULL;
    if (deciders != NULL && PyDict_Check(deciders) && context != NULL && PyDict_Check(context)) {
        decide = PyDict_GetItemWithError(deciders, key); /* borrowed */
        if (decide == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (decide == NULL) {
        return PyObject_CallMethodOneArg((PyObject *)self, str_decide, key);
    }
    /* The decider is Python code: hold what it could make self drop meanwhile. */
    Py_INCREF(decide);
    Py_INCREF(context);
    Py_INCREF(memo);
    PyObject *made = PyObject_CallOneArg(decide, context);
    Py_DECREF(context);
    Py_DECREF(decide);
    PyObject *kept = NULL;
    if (made != NULL) {
        /* setdefault: if two threads of one request race, both keep the first decision. */
        kept = PyDict_SetDefault(memo, key, made); /* borrowed */
        Py_XINCREF(kept);
        Py_DECREF(made);
    }
    Py_DECREF(memo);
    return kept;
}

/* (key, default=fallback) from a vectorcall. */
static int
parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *name,
           PyObject **key, PyObject **dflt)
{
    *key = nargs > 0 ? args[0] : NULL;
    if (nargs > 1) {
        *dflt = args[1];
    }
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    if (kwnames != NULL) {
        Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = args[nargs + i];
            int is_key = PyUnicode_Compare(kw, str_key) == 0;
            int is_default = !is_key && PyUnicode_Compare(kw, str_default) == 0;
            if ((is_key && *key != NULL) || (is_default && nargs > 1)) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'",
                             name, kw);
                return -1;
            }
            if (is_key) {
                *key = value;
            }
            else if (is_default) {
                *dflt = value;
            }
            else {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             name, kw);
                return -1;
            }
        }
    }
    if (*key == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'", name);
        return -1;
    }
    return 0;
}

enum kind { BOOLEAN, STRING, NUMBER, INTEGER, OBJECT };

static PyObject *
typed_get(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
          enum kind kind, const char *name, PyObject *fallback, PyObject *flag_type)
{
    PyObject *key, *dflt = fallback;
    if (parse_args(args, nargs, kwnames, name, &key, &dflt) < 0) {
        return NULL;
    }
    PyObject *decision = core_decision(self, key);
    if (decision == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttr(decision, str_value);
    if (value == NULL) {
        Py_DECREF(decision);
        return NULL;
    }
    int fits;
    switch (kind) {
    case BOOLEAN:
        fits = PyBool_Check(value);
        break;
    case STRING:
        fits = PyUnicode_CheckExact(value);
        break;
    case NUMBER:
        if (PyLong_CheckExact(value)) {
            Py_DECREF(decision);
            PyObject *as_float = PyNumber_Float(value);
            Py_DECREF(value);
            return as_float;
        }
        fits = PyFloat_CheckExact(value);
        break;
    case INTEGER:
        fits = PyLong_CheckExact(value);
        break;
    default:
        fits = PyDict_CheckExact(value) || PyList_CheckExact(value);
    }
    if (fits) {
        Py_DECREF(decision);
        return value;
    }
    Py_DECREF(value);
    PyObject *result = PyObject_CallMethodObjArgs((PyObject *)self, str_mismatch, key, decision,
                                                  dflt, flag_type, NULL);
    Py_DECREF(decision);
    return result;
}

static PyObject *
core_boolean(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return typed_get(self, args, nargs, kwnames, BOOLEAN, "boolean", Py_False, type_boolean);
}

static PyObject *
core_string(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return typed_get(self, args, nargs, kwnames, STRING, "string", empty_string, type_string);
}

static PyObject *
core_number(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return typed_get(self, args, nargs, kwnames, NUMBER, "number", zero_float, type_float);
}

static PyObject *
core_integer(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return typed_get(self, args, nargs, kwnames, INTEGER, "integer", zero_int, type_integer);
}

static PyObject *
core_object(CoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return typed_get(self, args, nargs, kwnames, OBJECT, "object", Py_None, type_object);
}

static PyMethodDef core_methods[] = {
    {"boolean", (PyCFunction)(void (*)(void))core_boolean, METH_FASTCALL | METH_KEYWORDS,
     "boolean($self, /, key, default=False)\n--\n\nThe flag's value if it is a boolean, else ``default``."},
    {"string", (PyCFunction)(void (*)(void))core_string, METH_FASTCALL | METH_KEYWORDS,
     "string($self, /, key, default='')\n--\n\nThe flag's value if it is a string, else ``default``."},
    {"number", (PyCFunction)(void (*)(void))core_number, METH_FASTCALL | METH_KEYWORDS,
     "number($self, /, key, default=0.0)\n--\n\nThe flag's value if it is a number (as a float), else ``default``."},
    {"integer", (PyCFunction)(void (*)(void))core_integer, METH_FASTCALL | METH_KEYWORDS,
     "integer($self, /, key, default=0)\n--\n\nThe flag's value if it is an integer, else ``default``."},
    {"object", (PyCFunction)(void (*)(void))core_object, METH_FASTCALL | METH_KEYWORDS,
     "object($self, /, key, default=None)\n--\n\nThe flag's value if it is a JSON object or array, else ``default``."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef core_members[] = {
    {"_memo", T_OBJECT_EX, offsetof(CoreObject, memo), 0, NULL},
    {"_deciders", T_OBJECT_EX, offsetof(CoreObject, deciders), 0, NULL},
    {"_context", T_OBJECT_EX, offsetof(CoreObject, context), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int
core_traverse(CoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->memo);
    Py_VISIT(self->deciders);
    Py_VISIT(self->context);
    return 0;
}

static int
core_clear(CoreObject *self)
{
    Py_CLEAR(self->memo);
    Py_CLEAR(self->deciders);
    Py_CLEAR(self->context);
    return 0;
}

static void
core_dealloc(CoreObject *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flagwire._speedups.RequestCore",
    .tp_doc = "The hot path of RequestFlags (memo, decider, type test), in C.",
    .tp_basicsize = sizeof(CoreObject),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "flagwire._speedups",
    .m_doc = "C speedups for flagwire's per-request flags (optional).",
    .m_size = -1,
};

static PyObject *
flag_type(PyObject *enum_class, const char *name)
{
    return PyObject_GetAttrString(enum_class, name);
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_value = PyUnicode_InternFromString("value");
    str_decide = PyUnicode_InternFromString("_decide");
    str_mismatch = PyUnicode_InternFromString("_mismatch");
    str_key = PyUnicode_InternFromString("key");
    str_default = PyUnicode_InternFromString("default");
    empty_string = PyUnicode_FromString("");
    zero_float = PyFloat_FromDouble(0.0);
    zero_int = PyLong_FromLong(0);
    if (!str_value || !str_decide || !str_mismatch || !str_key || !str_default ||
        !empty_string || !zero_float || !zero_int) {
        return NULL;
    }
    PyObject *assignment = PyImport_ImportModule("flagwire._assignment");
    if (assignment == NULL) {
        return NULL;
    }
    PyObject *types = PyObject_GetAttrString(assignment, "FlagType");
    Py_DECREF(assignment);
    if (types == NULL) {
        return NULL;
    }
    type_boolean = flag_type(types, "BOOLEAN");
    type_string = flag_type(types, "STRING");
    type_float = flag_type(types, "FLOAT");
    type_integer = flag_type(types, "INTEGER");
    type_object = flag_type(types, "OBJECT");
    Py_DECREF(types);
    if (!type_boolean || !type_string || !type_float || !type_integer || !type_object) {
        return NULL;
    }
    if (PyType_Ready(&CoreType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(module, "RequestCore", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
