package gateway

// Connection and handshake bounds (issue 25). When answers slow down,
// clients open more connections, and every new one costs a TLS handshake
// (an ECDSA or RSA signature and a key exchange: far more CPU than an XKS
// answer). A listener that accepts without bound lets new connections take
// the CPU the answers need. So the gateway accepts at most ConnRate new
// connections per second (with a burst of one second's worth) and holds at
// most MaxConns open; a connection past either bound is closed before its
// handshake, which costs the node next to nothing.

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

type limitListener struct {
	net.Listener
	now      func() time.Time
	maxConns int64
	rate     *rate.Limiter // nil: no rate bound
	open     atomic.Int64
	refusals *mesh.RefusalLog
}

// limitConns wraps ln with the bounds (maxConns < 0, perSecond < 0: none).
func limitConns(ln net.Listener, maxConns int, perSecond float64, now func() time.Time, refusals *mesh.RefusalLog) net.Listener {
	l := &limitListener{Listener: ln, now: now, maxConns: int64(maxConns), refusals: refusals}
	if perSecond > 0 {
		l.rate = rate.NewLimiter(rate.Limit(perSecond), max(int(perSecond), 1))
	}
	return l
}

// admit reports whether one more connection may be accepted now, and why not.
func (l *limitListener) admit() (ok bool, why string) {
	if l.maxConns > 0 && l.open.Load() >= l.maxConns {
		return false, "too many open connections"
	}
	if l.rate != nil && !l.rate.AllowN(l.now(), 1) {
		return false, "new connection rate exceeded"
	}
	return true, ""
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ok, why := l.admit(); !ok {
			_ = c.Close()
			l.refusals.Note(metrics.ReasonRateLimit, "connection closed before its handshake", "why", why)
			continue
		}
		l.open.Add(1)
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
