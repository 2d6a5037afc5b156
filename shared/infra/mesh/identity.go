package mesh

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// CredsUser returns the user name in a NATS .creds file's user JWT: the
// identity natsauth minted, which names the user's private inbox prefix and,
// for a gateway, its reply subjects.
func CredsUser(path string) (string, error) {
	uc, err := credsClaims(path)
	if err != nil {
		return "", err
	}
	return uc.Name, nil
}

// CredsExpiry returns when the user JWT of a .creds file expires (zero:
// never).
func CredsExpiry(path string) (time.Time, error) {
	uc, err := credsClaims(path)
	if err != nil || uc.Expires == 0 {
		return time.Time{}, err
	}
	return time.Unix(uc.Expires, 0), nil
}

func credsClaims(path string) (*jwt.UserClaims, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh: creds: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return nil, fmt.Errorf("mesh: creds %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("mesh: creds %s: %w", path, err)
	}
	if !shared.ValidUserName(uc.Name) {
		return nil, fmt.Errorf("%w: creds %s: user name %q is not a valid subject token", shared.ErrConfigValidation, path, uc.Name)
	}
	return uc, nil
}

// Identity returns the user name nc logged in as (set by Connect from the
// creds file), or "" for a connection without credentials (tests).
func Identity(nc *nats.Conn) string {
	p := nc.Opts.InboxPrefix
	if !strings.HasPrefix(p, shared.InboxPrefixBase) {
		return ""
	}
	return strings.TrimPrefix(p, shared.InboxPrefixBase)
}

// ReplySubjectPrefix is where the gateway connected as nc receives core-NATS
// replies: sovkeys.reply.<user>. for a credentialed connection (its user may
// subscribe only there), else the shared sovkeys.reply. prefix.
func ReplySubjectPrefix(nc *nats.Conn) string {
	if u := Identity(nc); u != "" {
		return shared.ReplySubjectPrefix(u)
	}
	return shared.SubjectReplyPrefix
}

// CredsWatchInterval is how often a connection re-reads its creds file.
const CredsWatchInterval = 2 * time.Second

// WatchCreds keeps nc on the credential in its creds file: every interval
// it re-reads path and, when the file holds another user JWT of the same
// user name (rotated by `sovkeys cluster init --rotate`, or renewed before
// it expires), makes nc reconnect. nats.go's UserCredentials reads the file
// at every (re)connect, so the new user logs in and the subscriptions,
// consumers and handlers of nc carry on; the old key, once revoked, is
// refused. A file that does not parse (being written) or names another
// user is left alone until the next look. It returns when nc is closed.
func WatchCreds(nc *nats.Conn, path string, interval time.Duration, logger *slog.Logger) {
	jwtOf := func() ([]byte, *jwt.UserClaims) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil
		}
		tok, err := jwt.ParseDecoratedJWT(b)
		if err != nil {
			return nil, nil
		}
		uc, err := jwt.DecodeUserClaims(tok)
		if err != nil {
			return nil, nil
		}
		return []byte(tok), uc
	}
	seen, first := jwtOf()
	if first == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for range t.C {
		if nc.IsClosed() {
			return
		}
		tok, uc := jwtOf()
		if uc == nil || bytes.Equal(tok, seen) {
			continue
		}
		if uc.Name != first.Name {
			logger.Error("creds file now names another user; keeping the connection", "file", path, "user", uc.Name, "want", first.Name)
			seen = tok
			continue
		}
		seen = tok
		if uc.Expires != 0 {
			metrics.CredentialExpiry(strings.TrimPrefix(nc.Opts.Name, "sovkeys-"), "nats_user", time.Unix(uc.Expires, 0))
		}
		logger.Info("creds file rotated; reconnecting with the new credential", "file", path, "user", uc.Name)
		if err := nc.ForceReconnect(); err != nil {
			logger.Warn("reconnect after creds rotation", "err", err)
		}
	}
}
