package agent

import (
	"context"
	"fmt"

	"github.com/sovkeys/sovkeys/cmd/sk-agent/internal/store"
	"github.com/sovkeys/sovkeys/shared/api/vs"
	"github.com/sovkeys/sovkeys/shared/client/vsclient"
)

// TakeownOptions are takeown's options.
type TakeownOptions struct {
	Device string
	// SourceInstance owned the volume (required for an original store,
	// which does not record its owner).
	SourceInstance   string
	IgnoreNitroCheck bool
}

// Takeown converts the secret of a volume restored from another instance
// of the same tenant so that this instance owns it. The previous blob
// stays in the store's history (v1) or is replaced in place (original).
func (a *Agent) Takeown(ctx context.Context, o TakeownOptions) error {
	if o.Device == "" {
		return usagef("takeown needs DEVICE")
	}
	if err := a.checkPlatform(ctx, o.IgnoreNitroCheck); err != nil {
		return err
	}
	v, err := a.openVolume(ctx, o.Device, !a.DryRun, true)
	if err != nil {
		return err
	}
	defer v.Close()
	s, err := a.readStore(ctx, v)
	if err != nil {
		return err
	}
	if err := a.step("Verifying the stored blob's signature (pinned key)", func() error { return a.verifyStored(ctx, s) }); err != nil {
		return err
	}
	me, err := a.instance(ctx)
	if err != nil {
		return err
	}
	owner := s.Current().InstanceID
	src := o.SourceInstance
	switch {
	case owner == me:
		fmt.Fprintln(a.Out, o.Device, "is already owned by", me)
		return nil
	case src == "" && owner == "":
		return usagef("this secret store (%s) does not record its owner: give the source instance with -i", s.Format)
	case src == "":
		src = owner
	case owner != "" && src != owner:
		return usagef("the secret store is owned by %s, not %s", owner, src)
	}
	if !vs.ValidID(src) {
		return usagef("source instance %q is malformed", src)
	}
	if a.DryRun {
		a.planned(fmt.Sprintf("ask %s to convert the secret of volume %s from %s to %s", a.Cfg.URL, v.volumeUUID, src, me))
		a.planned(fmt.Sprintf("write the new encrypted secret to the %s secret store", s.Format))
		return nil
	}
	api, err := a.api(ctx)
	if err != nil {
		return err
	}
	var blob vsclient.SignedBlob
	if err := a.step("Asking the service to convert the secret to "+me+" (signature verified)", func() error {
		return a.Cfg.Retry.call(ctx, a.Log, a.Sleep, string(vs.OpConvert), func(ctx context.Context) error {
			var err error
			blob, err = api.ConvertSecretSigned(ctx, me, src, v.volumeUUID, s.Current().EncryptedSecret)
			return err
		})
	}); err != nil {
		return err
	}
	rec := store.Record{InstanceID: me, EncryptedSecret: blob.EncryptedSecret, Signature: blob.Signature,
		Op: string(vs.OpConvert), SourceInstanceID: src, Time: a.Now().UTC()}
	if err := a.step("Storing the new encrypted secret", func() error {
		if s.Format == store.FormatOriginal {
			s.Records[0] = rec
			return store.WriteOriginal(v.section(), s, v.d.Sync)
		}
		s.Push(rec)
		return store.WriteV1(v.section(), s, v.d.Sync)
	}); err != nil {
		return err
	}
	fmt.Fprintln(a.Out, "Success: volume", v.volumeUUID, "now owned by", me, "(was", src+")")
	return nil
}
