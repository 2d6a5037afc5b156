package mesh

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/sovkeys/sovkeys/shared"
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
