/* thread_pool.h — a small persistent pool for the parameter kernels.
 * Why not OpenMP: ORT runs its own pool in the same process and OpenMP's spinning workers
 * fight it (measured 2x slowdown). These workers block on a condition variable between jobs. */
#ifndef EDGETUNE_THREAD_POOL_H
#define EDGETUNE_THREAD_POOL_H
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace et {

class ThreadPool {
public:
    ThreadPool() = default;
    ~ThreadPool();
    ThreadPool(const ThreadPool &) = delete;
    ThreadPool &operator=(const ThreadPool &) = delete;

    /* Total threads including the caller (>= 1). */
    void set_threads(int n);
    int threads() const;
    /* Runs fn(0..parts-1), part 0 on the calling thread; returns when all are done.
     * Concurrent callers are serialised. parts is clamped to threads(). */
    void run(int parts, const std::function<void(int)> &fn);

private:
    void stop_workers();
    void worker_main(int id, uint64_t seen);
    std::mutex call_mu_;   // one job at a time
    mutable std::mutex mu_;
    std::condition_variable cv_start_, cv_done_;
    std::vector<std::thread> workers_;
    const std::function<void(int)> *job_ = nullptr;
    int job_parts_ = 0;
    int pending_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
    int nthreads_ = 1;
};

ThreadPool &global_pool();

}  // namespace et
#endif
