package gateway

// Connection and handshake bounds (issue 25). When answers slow down,
// clients open more connections, and every new one costs a TLS handshake
// on both sides (a signature and a hybrid key exchange: far more CPU than
// an XKS answer). A listener that accepts without bound lets new
// connections take the CPU the answers need. So the gateway accepts at most
// ConnRate new connections per second (a burst of one second's worth) and
// holds at most MaxConns open. Past either bound it does not refuse: it
// stops accepting for a while, and the connections wait in the kernel's
// backlog, costing neither side any CPU. Closing them instead was tried
// (2026-12-07): clients that are refused a connection open another at once,
// and the churn of handshakes collapsed the generator's CPU (loadtest/
// overload.sh, 20,797 EOF errors at 1.3x capacity). A client whose request
// waits for a connection meanwhile takes any connection another request
// frees (Go's http.Transport does), so established connections carry the
// load.

import (
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

type limitListener struct {
	net.Listener
	now   func() time.Time
	sleep func(time.Duration)
	rate  *rate.Limiter // nil: no rate bound
	slots chan struct{} // nil: no bound on open connections
	done  chan struct{}
	once  sync.Once
}

// limitConns wraps ln with the bounds (maxConns <= 0, perSecond <= 0: none).
func limitConns(ln net.Listener, maxConns int, perSecond float64, now func() time.Time) net.Listener {
	l := &limitListener{Listener: ln, now: now, sleep: time.Sleep, done: make(chan struct{})}
	if perSecond > 0 {
		l.rate = rate.NewLimiter(rate.Limit(perSecond), max(int(perSecond), 1))
	}
	if maxConns > 0 {
		l.slots = make(chan struct{}, maxConns)
	}
	return l
}

// wait holds the next accept until a place and a token are free; it
// reports false once the listener is closed.
func (l *limitListener) wait() bool {
	if l.slots != nil {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return false
		}
	}
	if l.rate != nil {
		if d := l.rate.ReserveN(l.now(), 1).DelayFrom(l.now()); d > 0 {
			l.sleep(d)
		}
	}
	return true
}

func (l *limitListener) release() {
	if l.slots != nil {
		<-l.slots
	}
}

func (l *limitListener) Accept() (net.Conn, error) {
	if !l.wait() {
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		l.release()
		return nil, err
	}
	return &countedConn{Conn: c, l: l}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.release)
	return err
}
