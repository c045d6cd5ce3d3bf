package mysql

import (
	"log/slog"

	"github.com/plumecdc/plume/pkg/capture"
	"github.com/plumecdc/plume/pkg/config"
)

func init() { capture.RegisterSource(config.SourceMySQL, fromPipeline) }

// ConfigFrom maps a pipeline's source block to the connector's Config.
func ConfigFrom(p *config.Pipeline) (Config, error) {
	s := p.Source
	c := Config{
		Pipeline:          p.Name,
		DSN:               s.DSN.Reveal(),
		Tables:            s.Tables,
		Snapshot:          s.Snapshot != config.SnapshotNever,
		SnapshotWorkers:   s.SnapshotWorkers,
		SnapshotChunkSize: s.SnapshotChunkSize,
		SnapshotMode:      s.SnapshotMode,
		HeartbeatInterval: s.HeartbeatInterval.Duration,
		Keys:              s.Keys,
		ServerID:          s.ServerID,
	}
	var err error
	c.TLS, err = s.TLS.OptionalClientConfig()
	return c, err
}

func fromPipeline(p *config.Pipeline, log *slog.Logger) (capture.Source, error) {
	c, err := ConfigFrom(p)
	if err != nil {
		return nil, err
	}
	return New(c, log)
}
