"""The tuning process itself: signals (``interrupt``), short-lived children for memory-heavy jobs
(``child``), and the allocator settings that keep its peak near inference's (``malloc``)."""
