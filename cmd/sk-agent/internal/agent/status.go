package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"

	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// VolumeStatus is what status reports about one device (JSON).
type VolumeStatus struct {
	Device      string `json:"device"`
	VolumeUUID  string `json:"volume_uuid,omitempty"`
	StoreFormat string `json:"store_format,omitempty"`
	Owner       string `json:"owner_instance,omitempty"`
	Owned       *bool  `json:"owned_by_this_instance,omitempty"`
	// BlobSignature is valid, invalid, absent or unchecked (no pinned key).
	BlobSignature string `json:"blob_signature,omitempty"`
	History       int    `json:"history,omitempty"`
	Mapper        string `json:"mapper,omitempty"`
	MountedOn     string `json:"mounted_on,omitempty"`
	Automount     string `json:"automount,omitempty"`
	Error         string `json:"error,omitempty"`
	ExitCode      int    `json:"exit_code"`
}

// Status reports on devices (every automount entry when none is given),
// as JSON lines; its error is the first device's error.
func (a *Agent) Status(ctx context.Context, devices []string) error {
	entries, err := ReadAutomount(a.Cfg.AutomountFile)
	if err != nil {
		return err
	}
	auto := map[string]string{}
	for _, e := range entries {
		auto[e.Device] = e.MountPoint
	}
	if len(devices) == 0 {
		for _, e := range entries {
			devices = append(devices, e.Device)
		}
	}
	var first error
	enc := json.NewEncoder(a.Out)
	for _, dev := range devices {
		st, err := a.status(ctx, dev)
		st.Automount = auto[dev]
		if err != nil {
			st.Error, st.ExitCode = err.Error(), int(Code(err))
			if first == nil {
				first = err
			}
		}
		if err := enc.Encode(st); err != nil {
			return err
		}
	}
	return first
}

func (a *Agent) status(ctx context.Context, dev string) (VolumeStatus, error) {
	st := VolumeStatus{Device: dev}
	v, err := a.openVolume(ctx, dev, false, false)
	if err != nil {
		return st, err
	}
	defer v.Close()
	st.VolumeUUID, st.Mapper = v.volumeUUID, v.mapperName()
	st.MountedOn, _ = a.mountedAt(v.mapperName())
	s, err := a.readStore(ctx, v)
	if err != nil {
		return st, err
	}
	st.StoreFormat, st.Owner, st.History = s.Format.String(), s.Current().InstanceID, len(s.Records)
	if me, err := a.instance(ctx); err == nil && st.Owner != "" {
		owned := me == st.Owner
		st.Owned = &owned
	}
	switch {
	case len(s.Current().Signature) == 0:
		st.BlobSignature = "absent"
	case a.Cfg.SigningKey == "" && a.API == nil:
		st.BlobSignature = "unchecked"
	default:
		if err := a.verifyStored(ctx, s); err != nil {
			st.BlobSignature = "invalid"
			return st, err
		}
		st.BlobSignature = "valid"
	}
	return st, nil
}

// CheckKey compares the pinned signing key with the one the service
// publishes (the original's sk-chk-pubkey).
func (a *Agent) CheckKey(ctx context.Context) error {
	if _, err := a.api(ctx); err != nil {
		return err
	}
	pinnedDER, err := a.Cfg.signingKeyDER()
	if err != nil {
		return err
	}
	pinned, err := vsclient.ParseSigningKey(pinnedDER)
	if err != nil {
		return fmt.Errorf("%w: pinned key: %w", ErrUsage, err)
	}
	var remote []byte
	if err := a.step("Fetching the service's public signing key", func() error {
		return a.Cfg.Retry.call(ctx, a.Log, a.Sleep, "public-signing-key", func(ctx context.Context) error {
			var err error
			remote, err = vsclient.FetchSigningKey(ctx, a.HTTP, a.Cfg.URL)
			return err
		})
	}); err != nil {
		return err
	}
	pub, err := x509.ParsePKIXPublicKey(remote)
	if err != nil || !pinned.Equal(pub) {
		fmt.Fprintln(a.Out, "Keys DIFFER: the service does not sign with the pinned key")
		return fmt.Errorf("%w (pinned: %s)", ErrKeyMismatch, a.Cfg.SigningKey)
	}
	fmt.Fprintln(a.Out, "Keys are identical")
	return nil
}

// IsRoot reports whether the process runs as root.
func IsRoot() bool { return os.Geteuid() == 0 }
