// core_module.cpp — pybind11 bindings: edgetune._core.
// Kernels take numpy float32 C-contiguous writeable arrays and release the GIL while they run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "arena.h"
#include "core.h"
#include "edgetune.h"

#ifdef ET_HAVE_CUDA
#include "cuda/cuda_kernels.h"
#endif

namespace py = pybind11;

namespace {

int parse_dist(const std::string &d) {
    if (d == "gaussian") return et::GAUSSIAN;
    if (d == "rademacher") return et::RADEMACHER;
    throw py::value_error("dist must be 'gaussian' or 'rademacher', got '" + d + "'");
}

// A writeable, C-contiguous float32 array, or a clear ValueError.
float *checked_buffer(py::handle obj, size_t *n, const char *what) {
    if (!py::isinstance<py::array>(obj)) throw py::value_error(std::string(what) + " must be a numpy.ndarray");
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (!arr.dtype().is(py::dtype::of<float>()))
        throw py::value_error(std::string(what) + " must have dtype float32, got " + std::string(py::str(arr.dtype())));
    if (!(arr.flags() & py::array::c_style))
        throw py::value_error(std::string(what) + " must be C-contiguous");
    if (!arr.writeable()) throw py::value_error(std::string(what) + " must be writeable");
    *n = (size_t)arr.size();
    return static_cast<float *>(arr.mutable_data());
}

uint64_t to_u64(py::handle h, const char *what) {
    py::int_ v = py::reinterpret_borrow<py::object>(h);
    if (v < py::int_(0) || v > py::int_(UINT64_MAX))
        throw py::value_error(std::string(what) + " must be in [0, 2**64)");
    return v.cast<uint64_t>();
}

void raise_status(et_status s) {
    if (s == ET_OK || s == ET_DONE) return;
    std::string msg = std::string("edgetune: ") + et_status_string(s);
    switch (s) {
    case ET_ERR_OUT_OF_MEMORY: throw std::bad_alloc();
    case ET_ERR_NONFINITE_LOSS: PyErr_SetString(PyExc_FloatingPointError, msg.c_str()); throw py::error_already_set();
    case ET_ERR_STATE: throw std::runtime_error(msg);
    default: throw py::value_error(msg);
    }
}

// Python owner of an et_tuner (through the C API, so Python exercises exactly what apps use).
struct PyTuner {
    et_tuner *t = nullptr;
    et_tuner_params p{};
    ~PyTuner() { et_tuner_free(t); }
};

std::shared_ptr<PyTuner> make_tuner(py::dict cfg) {
    auto self = std::make_shared<PyTuner>();
    et_tuner_default_params(&self->p);
    et_tuner_params &p = self->p;
    for (auto item : cfg) {
        std::string k = py::str(item.first);
        py::handle v = item.second;
        if (k == "n_params") p.n_params = to_u64(v, "n_params");
        else if (k == "seed") p.seed = to_u64(v, "seed");
        else if (k == "lr") p.lr = v.cast<float>();
        else if (k == "eps") p.eps = v.cast<float>();
        else if (k == "weight_decay") p.weight_decay = v.cast<float>();
        else if (k == "queries") p.queries = v.cast<uint32_t>();
        else if (k == "max_steps") p.max_steps = to_u64(v, "max_steps");
        else if (k == "noise") p.noise = py::isinstance<py::str>(v) ? parse_dist(v.cast<std::string>()) : v.cast<int>();
        else if (k == "threads") p.threads = v.cast<int32_t>();
        else throw py::value_error("Tuner: unknown parameter '" + k + "'");
    }
    raise_status(et_tuner_create(&p, &self->t));
    return self;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "edgetune core: counter-based noise, fused ZO kernels, parameter arena, ask/tell tuner";
    m.attr("__version__") = et_version();

    m.def("derive_seed", [](py::int_ run_seed, py::int_ step, py::int_ query) {
        return et::derive_seed(to_u64(run_seed, "run_seed"), to_u64(step, "step"), to_u64(query, "query"));
    }, py::arg("run_seed"), py::arg("step"), py::arg("query"));

    m.def("epoch_permutation", [](py::int_ seed, py::int_ epoch, py::ssize_t n) {
        if (n < 0) throw py::value_error("n must be >= 0");
        py::array_t<int64_t> out(n);
        et::epoch_permutation(to_u64(seed, "seed"), to_u64(epoch, "epoch"), (uint64_t)n,
                              reinterpret_cast<uint64_t *>(out.mutable_data()));
        return out;
    }, py::arg("seed"), py::arg("epoch"), py::arg("n"),
       "the order of n training examples in an epoch of a run (edgetune.h et_epoch_permutation), int64");

    m.def("noise", [](py::int_ seed, py::int_ offset, py::ssize_t count, const std::string &dist) {
        if (count < 0) throw py::value_error("count must be >= 0");
        int d = parse_dist(dist);
        uint64_t s = to_u64(seed, "seed"), o = to_u64(offset, "offset");
        py::array_t<float> out(count);
        float *p = out.mutable_data();
        {
            py::gil_scoped_release nogil;
            et::noise_fill(s, o, (size_t)count, d, p);
        }
        return out;
    }, py::arg("seed"), py::arg("offset"), py::arg("count"), py::arg("dist") = "gaussian",
       "z(seed, offset + i) for i < count, float32");

    m.def("perturb", [](py::object buf, py::int_ seed, float scale, const std::string &dist, py::int_ offset) {
        size_t n;
        float *p = checked_buffer(buf, &n, "buf");
        int d = parse_dist(dist);
        uint64_t s = to_u64(seed, "seed"), o = to_u64(offset, "offset");
        py::gil_scoped_release nogil;
        et::perturb(p, n, s, scale, d, o);
    }, py::arg("buf"), py::arg("seed"), py::arg("scale"), py::arg("dist") = "gaussian", py::arg("offset") = 0,
       "buf[i] += scale * z(seed, offset + i)");

    m.def("combine", [](py::object buf, float decay, py::list seeds, py::list coefs, const std::string &dist,
                        py::int_ offset) {
        size_t n;
        float *p = checked_buffer(buf, &n, "buf");
        if (seeds.size() != coefs.size()) throw py::value_error("seeds and coefs must have the same length");
        int d = parse_dist(dist);
        std::vector<uint64_t> sv;
        std::vector<float> cv;
        for (auto s : seeds) sv.push_back(to_u64(s, "seed"));
        for (auto c : coefs) cv.push_back(c.cast<float>());
        uint64_t o = to_u64(offset, "offset");
        py::gil_scoped_release nogil;
        et::combine(p, n, decay, sv.data(), cv.data(), sv.size(), d, o);
    }, py::arg("buf"), py::arg("decay"), py::arg("seeds"), py::arg("coefs"), py::arg("dist") = "gaussian",
       py::arg("offset") = 0,
       "buf[i] = decay*buf[i] + sum_k coefs[k]*z(seeds[k], offset+i), float32, in that order");

    m.def("adam_window", [](py::object buf, py::list seeds, std::vector<float> coefs, std::vector<uint32_t> queries,
                            std::vector<float> m_weights, std::vector<float> v_weights, float decay, float lr,
                            float delta, py::object restore, py::object next, const std::string &dist,
                            py::int_ offset) {
        size_t n;
        float *p = checked_buffer(buf, &n, "buf");
        et::AdamWindow w;
        for (auto s : seeds) w.seeds.push_back(to_u64(s, "seed"));
        size_t total = 0;
        for (uint32_t q : queries) total += q;
        if (m_weights.size() != queries.size() || v_weights.size() != queries.size())
            throw py::value_error("queries, m_weights and v_weights need one value per window step");
        if (w.seeds.size() != coefs.size() || w.seeds.size() != total)
            throw py::value_error("seeds and coefs need sum(queries) values");
        w.coefs = std::move(coefs);
        w.m_weights = std::move(m_weights);
        w.v_weights = std::move(v_weights);
        w.queries = queries;
        w.decay = decay; w.lr = lr; w.delta = delta;
        if ((w.has_restore = !restore.is_none())) {
            auto t = restore.cast<py::tuple>();
            w.restore_seed = to_u64(t[0], "restore seed"); w.restore_scale = t[1].cast<float>();
        }
        if ((w.has_next = !next.is_none())) {
            auto t = next.cast<py::tuple>();
            w.next_seed = to_u64(t[0], "next seed"); w.next_scale = t[1].cast<float>();
        }
        int d = parse_dist(dist);
        uint64_t o = to_u64(offset, "offset");
        py::gil_scoped_release nogil;
        et::adam_window(p, n, w, d, o);
    }, py::arg("buf"), py::arg("seeds"), py::arg("coefs"), py::arg("queries"), py::arg("m_weights"),
       py::arg("v_weights"), py::arg("decay"), py::arg("lr"), py::arg("delta"), py::arg("restore") = py::none(),
       py::arg("next") = py::none(), py::arg("dist") = "gaussian", py::arg("offset") = 0,
       "ZO-Adam step with moments rebuilt from a window: ghat_s = sum of coefs[k]*z(seeds[k]) over step s's "
       "queries[s] pairs (steps in turn); "
       "theta = buf + r*z(restore); m = sum_s m_weights[s]*ghat_s; v = sum_s v_weights[s]*ghat_s^2; "
       "buf = decay*theta - lr*m/(sqrt(v)+delta) [+ s*z(next)]; restore/next: (seed, scale) or None");

    m.def("perturb_copies", [](py::object src, py::object dst, std::vector<std::pair<size_t, size_t>> segments,
                               py::list seeds, std::vector<float> scales, const std::string &dist) {
        size_t n_src, n_dst;
        const float *s = checked_buffer(src, &n_src, "src");
        float *d = checked_buffer(dst, &n_dst, "dst");
        std::vector<uint64_t> sv;
        for (auto x : seeds) sv.push_back(to_u64(x, "seed"));
        const size_t k = sv.size();
        if (k == 0 || scales.size() != k) throw py::value_error("seeds and scales must have the same, non-zero length");
        for (auto [offset, count] : segments)
            if (offset + count > n_src || k * (offset + count) > n_dst)
                throw py::value_error("segment [" + std::to_string(offset) + ", +" + std::to_string(count) +
                                      ") lies outside src or its copies outside dst");
        int dd = parse_dist(dist);
        py::gil_scoped_release nogil;
        for (auto [offset, count] : segments)
            et::perturb_copies(s + offset, count, d + k * offset, count, sv.data(), scales.data(), k, dd, offset);
    }, py::arg("src"), py::arg("dst"), py::arg("segments"), py::arg("seeds"), py::arg("scales"),
       py::arg("dist") = "gaussian",
       "for each segment (offset, n) of src and p < k = len(seeds): "
       "dst[k*offset + p*n + i] = src[offset + i] + scales[p]*z(seeds[p], offset + i); src is not written");

    m.def("set_num_threads", [](int n) {
        if (n < 0) throw py::value_error("n must be >= 0 (0 = hardware threads)");
        et::set_num_threads(n);
    }, py::arg("n"));
    m.def("get_num_threads", &et::get_num_threads);
    m.def("simd_level", [] { return std::string(et::simd_level()); });
    m.def("available_isas", &et::available_isas);
    m.def("set_isa", [](const std::string &name) {
        if (!et::set_isa(name)) throw py::value_error("ISA '" + name + "' is not compiled in or not supported here");
    }, py::arg("name"));

#ifdef ET_HAVE_CUDA
    m.def("cuda_available", [] { return et::cuda::available(); });
    m.def("cuda_noise", [](py::int_ seed, py::int_ offset, py::ssize_t count, const std::string &dist) {
        if (count < 0) throw py::value_error("count must be >= 0");
        int d = parse_dist(dist);
        uint64_t s = to_u64(seed, "seed"), o = to_u64(offset, "offset");
        py::array_t<float> out(count);
        float *p = out.mutable_data();
        std::string err;
        {
            py::gil_scoped_release nogil;
            err = et::cuda::noise_to_host(s, o, (size_t)count, d, p);
        }
        if (!err.empty()) throw std::runtime_error("CUDA: " + err);
        return out;
    }, py::arg("seed"), py::arg("offset"), py::arg("count"), py::arg("dist") = "gaussian",
       "Noise generated on the GPU and copied back (for bit-identity checks)");
    m.def("cuda_perturb", [](uintptr_t dev_ptr, size_t n, py::int_ seed, float scale, const std::string &dist,
                             py::int_ offset) {
        int d = parse_dist(dist);
        uint64_t s = to_u64(seed, "seed"), o = to_u64(offset, "offset");
        std::string err;
        {
            py::gil_scoped_release nogil;
            err = et::cuda::perturb((float *)dev_ptr, n, s, scale, d, o);
        }
        if (!err.empty()) throw std::runtime_error("CUDA: " + err);
    }, py::arg("dev_ptr"), py::arg("n"), py::arg("seed"), py::arg("scale"), py::arg("dist") = "gaussian",
       py::arg("offset") = 0, "perturb on a device pointer (e.g. torch/cupy tensor data_ptr())");
    m.def("cuda_combine", [](uintptr_t dev_ptr, size_t n, float decay, std::vector<uint64_t> seeds,
                             std::vector<float> coefs, const std::string &dist, py::int_ offset) {
        if (seeds.size() != coefs.size()) throw py::value_error("seeds and coefs must have the same length");
        int d = parse_dist(dist);
        uint64_t o = to_u64(offset, "offset");
        std::string err;
        {
            py::gil_scoped_release nogil;
            err = et::cuda::combine((float *)dev_ptr, n, decay, seeds.data(), coefs.data(), seeds.size(), d, o);
        }
        if (!err.empty()) throw std::runtime_error("CUDA: " + err);
    }, py::arg("dev_ptr"), py::arg("n"), py::arg("decay"), py::arg("seeds"), py::arg("coefs"),
       py::arg("dist") = "gaussian", py::arg("offset") = 0);
#else
    m.def("cuda_available", [] { return false; });
#endif
    m.attr("cuda_compiled") =
#ifdef ET_HAVE_CUDA
        true;
#else
        false;
#endif

    // ---- Arena ----
    py::class_<et::Arena, std::shared_ptr<et::Arena>>(m, "Arena",
        "One contiguous 64-byte aligned fp32 block with named, 16-float aligned views and layer groups")
        .def(py::init<>())
        .def("add", [](et::Arena &a, const std::string &name, std::vector<int64_t> shape, int group) {
            try { return a.add(name, shape, group); }
            catch (const std::invalid_argument &e) { throw py::value_error(e.what()); }
        }, py::arg("name"), py::arg("shape"), py::arg("group") = 0)
        .def("finalize", [](et::Arena &a) {
            try { a.finalize(); }
            catch (const std::invalid_argument &e) { throw py::value_error(e.what()); }
        })
        .def_property_readonly("size", &et::Arena::size)
        .def_property_readonly("finalized", &et::Arena::finalized)
        .def("__len__", &et::Arena::size)
        .def("names", [](const et::Arena &a) {
            std::vector<std::string> v;
            for (auto &x : a.views()) v.push_back(x.name);
            return v;
        })
        .def("__contains__", [](const et::Arena &a, const std::string &n) {
            for (auto &x : a.views()) if (x.name == n) return true;
            return false;
        })
        .def("offset", [](const et::Arena &a, const std::string &n) {
            try { return a.view(n).offset; } catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
        })
        .def("numel", [](const et::Arena &a, const std::string &n) {
            try { return a.view(n).numel; } catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
        })
        .def("shape", [](const et::Arena &a, const std::string &n) {
            try { return py::tuple(py::cast(a.view(n).shape)); }
            catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
        })
        .def("group", [](const et::Arena &a, const std::string &n) {
            try { return a.view(n).group; } catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
        })
        .def("group_range", [](const et::Arena &a, int g) {
            try { return a.group_range(g); }
            catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
            catch (const std::invalid_argument &e) { throw py::value_error(e.what()); }
        }, py::arg("group"))
        .def("tensor", [](std::shared_ptr<et::Arena> a, const std::string &n) {
            if (!a->finalized()) throw py::value_error("Arena.tensor before finalize");
            const et::Arena::View *v;
            try { v = &a->view(n); } catch (const std::out_of_range &e) { throw py::key_error(e.what()); }
            std::vector<py::ssize_t> shape(v->shape.begin(), v->shape.end());
            // base = a capsule holding the shared_ptr: the view keeps the Arena alive
            auto *keep = new std::shared_ptr<et::Arena>(a);
            py::capsule base(keep, [](void *p) { delete static_cast<std::shared_ptr<et::Arena> *>(p); });
            return py::array_t<float>(shape, a->data() + v->offset, base);
        }, py::arg("name"), "writeable zero-copy view; keeps the Arena alive")
        .def("buffer", [](std::shared_ptr<et::Arena> a) {
            if (!a->finalized()) throw py::value_error("Arena.buffer before finalize");
            auto *keep = new std::shared_ptr<et::Arena>(a);
            py::capsule base(keep, [](void *p) { delete static_cast<std::shared_ptr<et::Arena> *>(p); });
            return py::array_t<float>({(py::ssize_t)a->size()}, a->data(), base);
        }, "1-D writeable zero-copy view of the whole block")
        .def("data_ptr", [](et::Arena &a) {
            if (!a.finalized()) throw py::value_error("Arena.data_ptr before finalize");
            return (uintptr_t)a.data();
        });

    // ---- Tuner (C API) ----
    py::class_<PyTuner, std::shared_ptr<PyTuner>>(m, "Tuner",
        "ask/tell ZO-SGD tuner of the C API. Tuner({'n_params': n, ...}) or Tuner(n_params=n, ...); keys: "
        "n_params, seed, lr, eps, weight_decay, queries, max_steps, noise ('gaussian'|'rademacher'), threads")
        .def(py::init([](py::object params, py::kwargs kw) {
            py::dict cfg;
            if (!params.is_none()) cfg = py::dict(params);
            for (auto item : kw) cfg[item.first] = item.second;
            return make_tuner(cfg);
        }), py::arg("params") = py::none())
        .def("arena", [](std::shared_ptr<PyTuner> self) {
            float *d; size_t n;
            raise_status(et_tuner_arena(self->t, &d, &n));
            auto *keep = new std::shared_ptr<PyTuner>(self);
            py::capsule base(keep, [](void *p) { delete static_cast<std::shared_ptr<PyTuner> *>(p); });
            return py::array_t<float>({(py::ssize_t)n}, d, base);
        }, "writeable zero-copy view of the tuner's arena; keeps the tuner alive")
        .def("ask", [](PyTuner &self) -> py::object {
            et_probe pr;
            et_status s;
            { py::gil_scoped_release nogil; s = et_tuner_ask(self.t, &pr); }
            if (s == ET_DONE) return py::none();
            raise_status(s);
            return py::make_tuple(pr.step, pr.query, pr.sign);
        }, "perturb for the next evaluation: (step, query, sign), or None when max_steps is reached")
        .def("tell", [](PyTuner &self, py::tuple probe, float loss) {
            if (probe.size() != 3) throw py::value_error("probe must be (step, query, sign)");
            et_probe pr;
            pr.step = to_u64(probe[0], "step");
            pr.query = probe[1].cast<uint32_t>();
            pr.sign = probe[2].cast<int32_t>();
            pr.seed = 0;
            et_status s;
            { py::gil_scoped_release nogil; s = et_tuner_tell(self.t, &pr, loss); }
            raise_status(s);
        }, py::arg("probe"), py::arg("loss"),
           "report the loss; raises FloatingPointError on a non-finite loss (arena restored, probe re-issued)")
        .def("set_lr_eps", [](PyTuner &self, float lr, float eps) { raise_status(et_tuner_set_lr_eps(self.t, lr, eps)); },
             py::arg("lr"), py::arg("eps"))
        .def_property_readonly("step", [](PyTuner &self) { uint64_t s; raise_status(et_tuner_step(self.t, &s)); return s; })
        .def("last_grads", [](PyTuner &self) {
            uint32_t n = 0;
            et_status s = et_tuner_last_grads(self.t, nullptr, 0, &n);
            if (s == ET_ERR_STATE) return std::vector<float>{};
            raise_status(s);
            std::vector<float> g(n);
            raise_status(et_tuner_last_grads(self.t, g.data(), n, &n));
            return g;
        })
        .def("last_loss", [](PyTuner &self) -> py::object {
            float l;
            et_status s = et_tuner_last_loss(self.t, &l);
            if (s == ET_ERR_STATE) return py::none();
            raise_status(s);
            return py::float_(l);
        })
        .def_property_readonly("params", [](PyTuner &self) {
            py::dict d;
            const et_tuner_params &p = self.p;
            d["n_params"] = p.n_params; d["seed"] = p.seed; d["lr"] = p.lr; d["eps"] = p.eps;
            d["weight_decay"] = p.weight_decay; d["queries"] = p.queries; d["max_steps"] = p.max_steps;
            d["noise"] = p.noise == ET_NOISE_RADEMACHER ? "rademacher" : "gaussian"; d["threads"] = p.threads;
            return d;
        });
}
