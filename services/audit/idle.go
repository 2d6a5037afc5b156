package audit

import "time"

// Idle scopes
//
// A queue (with its cached head and dedupe ids) exists per scope that had
// events. Scopes come and go (tenants, key stores, and the bounded
// unauthenticated scope), so a queue idle for idleAfter is freed; the next
// event of its scope makes a new one, which reloads the head from the
// stream. A queue is freed only while nothing is queued, committing or
// held for redelivery, under both locks, and marked freed so a dispatch
// that fetched it just before re-fetches the scope's queue.

const idleAfter = time.Minute

// freeIdle frees the queues idle since before now - idleAfter.
func (s *Service) freeIdle(now time.Time) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	for sc, q := range s.queues {
		q.mu.Lock()
		if !q.running && len(q.items) == 0 && len(q.byID) == 0 && !q.idle.IsZero() && now.Sub(q.idle) > idleAfter {
			q.freed = true
			delete(s.queues, sc)
		}
		q.mu.Unlock()
	}
}

// queueCount returns how many scope queues are held.
func (s *Service) queueCount() int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.queues)
}
