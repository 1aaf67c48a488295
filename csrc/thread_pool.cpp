#include "thread_pool.h"

namespace et {

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        stop_ = true;
    }
    cv_start_.notify_all();
    for (auto &w : workers_) w.join();
    workers_.clear();
    stop_ = false;
}

void ThreadPool::set_threads(int n) {
    if (n < 1) n = 1;
    std::lock_guard<std::mutex> call(call_mu_);
    if (n == nthreads_) return;
    stop_workers();
    nthreads_ = n;
    for (int i = 1; i < n; ++i) workers_.emplace_back(&ThreadPool::worker_main, this, i, generation_);
}

int ThreadPool::threads() const {
    std::lock_guard<std::mutex> lk(mu_);
    return nthreads_;
}

// `seen` is the generation at creation (under call_mu_), so a job posted before this thread
// first runs is not missed.
void ThreadPool::worker_main(int id, uint64_t seen) {
    for (;;) {
        const std::function<void(int)> *job;
        {
            std::unique_lock<std::mutex> lk(mu_);
            cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            if (id >= job_parts_) continue;
            job = job_;
        }
        (*job)(id);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (--pending_ == 0) cv_done_.notify_one();
        }
    }
}

void ThreadPool::run(int parts, const std::function<void(int)> &fn) {
    std::lock_guard<std::mutex> call(call_mu_);
    if (parts > nthreads_) parts = nthreads_;
    if (parts <= 1) {
        fn(0);
        return;
    }
    {
        std::lock_guard<std::mutex> lk(mu_);
        job_ = &fn;
        job_parts_ = parts;
        pending_ = parts - 1;
        ++generation_;
    }
    cv_start_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
}

ThreadPool &global_pool() {
    static ThreadPool pool;  // default 1 thread: no workers until asked
    return pool;
}

}  // namespace et
