// Command peer plays the Go service against django-outbox: the GORM model of
// model/outbox.go on MySQL/MariaDB, and a franz-go client on Kafka. The Python
// tests (tests/test_interop_go.py) run it as a subprocess; every subcommand
// reads its input as JSON on stdin (where it has any) and prints JSON on stdout.
//
//	peer automigrate --dsn DSN             AutoMigrate the model; print the SQL it ran
//	peer write --dsn DSN                   create rows as the Go service does
//	peer rows --dsn DSN --ids 1,2          read rows back through the model
//	peer mark --dsn DSN --ids 1,2 --status published|consumed
//	peer produce --brokers B --topic T [--codec none|gzip|snappy|lz4|zstd]
//	peer read --brokers B --topic T --count N
//	peer vectors --schema FILE --manifest FILE
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // TZ=Asia/Shanghai works on a host without zoneinfo

	"github.com/django-outbox/interop/model"
	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kgo"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: peer automigrate|write|rows|mark|produce|read|vectors [flags]"))
	}
	commands := map[string]func([]string) (any, error){
		"automigrate": automigrate,
		"write":       write,
		"rows":        rows,
		"mark":        mark,
		"produce":     produce,
		"read":        read,
		"vectors":     vectors,
	}
	command, ok := commands[os.Args[1]]
	if !ok {
		fail(fmt.Errorf("unknown subcommand %q", os.Args[1]))
	}
	result, err := command(os.Args[2:])
	if err != nil {
		fail(err)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	if err := out.Encode(result); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(1)
}

// ---------------------------------------------------------------- database

// recorder is a GORM logger that keeps every statement GORM ran.
type recorder struct {
	mu         sync.Mutex
	statements []string
}

func (r *recorder) LogMode(logger.LogLevel) logger.Interface      { return r }
func (r *recorder) Info(context.Context, string, ...interface{})  {}
func (r *recorder) Warn(context.Context, string, ...interface{})  {}
func (r *recorder) Error(context.Context, string, ...interface{}) {}
func (r *recorder) Trace(_ context.Context, _ time.Time, fc func() (string, int64), err error) {
	sql, _ := fc()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statements = append(r.statements, sql)
}

func open(dsn string, log logger.Interface) (*gorm.DB, error) {
	if log == nil {
		log = logger.Default.LogMode(logger.Silent)
	}
	return gorm.Open(mysql.Open(dsn), &gorm.Config{Logger: log})
}

func automigrate(args []string) (any, error) {
	flags := flag.NewFlagSet("automigrate", flag.ExitOnError)
	dsn := flags.String("dsn", "", "go-sql-driver/mysql DSN")
	_ = flags.Parse(args)
	log := &recorder{}
	db, err := open(*dsn, log)
	if err != nil {
		return nil, err
	}
	log.statements = nil // only what AutoMigrate runs
	if err := db.AutoMigrate(&model.AgentOutboxMessage{}); err != nil {
		return nil, err
	}
	return map[string]any{"statements": log.statements}, nil
}

// Envelope is the unified event envelope in its documented key order.
type Envelope struct {
	EventID    string            `json:"event_id"`
	EventType  string            `json:"event_type"`
	Version    int               `json:"version"`
	OccurredAt time.Time         `json:"occurred_at"`
	Key        string            `json:"key"`
	Headers    map[string]string `json:"headers"`
	Data       json.RawMessage   `json:"data"`
}

// writeSpec is one row to create; the peer draws the event id and spells it.
type writeSpec struct {
	Topic     string            `json:"topic"`
	EventType string            `json:"event_type"`
	Key       string            `json:"key"`
	Headers   map[string]string `json:"headers"`
	Data      json.RawMessage   `json:"data"`
	Spelling  string            `json:"spelling"` // see spell()
	Order     string            `json:"order"`    // "struct" (documented order) or "map" (sorted keys)
	Zone      string            `json:"zone"`     // occurred_at's location, default UTC
}

func spell(id uuid.UUID, spelling string) (string, error) {
	canonical := id.String()
	switch spelling {
	case "", "canonical":
		return canonical, nil
	case "upper":
		return strings.ToUpper(canonical), nil
	case "braces":
		return "{" + canonical + "}", nil
	case "urn":
		return "urn:uuid:" + canonical, nil
	case "hex":
		return strings.ReplaceAll(canonical, "-", ""), nil
	case "upper-hex":
		return strings.ToUpper(strings.ReplaceAll(canonical, "-", "")), nil
	case "upper-braces":
		return "{" + strings.ToUpper(canonical) + "}", nil
	}
	return "", fmt.Errorf("unknown spelling %q", spelling)
}

func envelopeJSON(spec writeSpec, eventID string) (string, error) {
	location := time.UTC
	if spec.Zone != "" {
		var err error
		if location, err = time.LoadLocation(spec.Zone); err != nil {
			return "", err
		}
	}
	headers := spec.Headers
	if headers == nil {
		headers = map[string]string{}
	}
	data := spec.Data
	if data == nil {
		data = json.RawMessage("null")
	}
	envelope := Envelope{eventID, spec.EventType, 1, time.Now().In(location), spec.Key, headers, data}
	var value any = envelope
	switch spec.Order {
	case "", "struct":
	case "map": // encoding/json writes a map's keys sorted
		value = map[string]any{
			"event_id": envelope.EventID, "event_type": envelope.EventType,
			"version": envelope.Version, "occurred_at": envelope.OccurredAt,
			"key": envelope.Key, "headers": envelope.Headers, "data": envelope.Data,
		}
	default:
		return "", fmt.Errorf("unknown order %q", spec.Order)
	}
	raw, err := json.Marshal(value) // HTML-escaping on, as json.Marshal does in the service
	return string(raw), err
}

func write(args []string) (any, error) {
	flags := flag.NewFlagSet("write", flag.ExitOnError)
	dsn := flags.String("dsn", "", "go-sql-driver/mysql DSN")
	_ = flags.Parse(args)
	var specs []writeSpec
	if err := json.NewDecoder(os.Stdin).Decode(&specs); err != nil {
		return nil, err
	}
	db, err := open(*dsn, nil)
	if err != nil {
		return nil, err
	}
	type written struct {
		ID       int64  `json:"id"`
		EventID  string `json:"event_id"` // as spelled in the payload
		Canonial string `json:"canonical_event_id"`
		Payload  string `json:"payload"`
	}
	var out []written
	for _, spec := range specs {
		id := uuid.New()
		spelled, err := spell(id, spec.Spelling)
		if err != nil {
			return nil, err
		}
		if parsed, err := uuid.Parse(spelled); err != nil || parsed != id {
			return nil, fmt.Errorf("uuid.Parse does not accept %q: %v", spelled, err)
		}
		payload, err := envelopeJSON(spec, spelled)
		if err != nil {
			return nil, err
		}
		row := model.AgentOutboxMessage{
			EventType:  spec.EventType,
			Topic:      spec.Topic,
			MessageKey: spec.Key,
			Payload:    payload,
			Status:     model.OutboxStatusPending,
		}
		// The service writes the row in the business transaction; GORM fills
		// retry_count/max_retry from the column defaults and the two times itself.
		if err := db.Transaction(func(tx *gorm.DB) error { return tx.Create(&row).Error }); err != nil {
			return nil, err
		}
		out = append(out, written{row.ID, spelled, id.String(), payload})
	}
	return out, nil
}

func parseIDs(list string) ([]int64, error) {
	var ids []int64
	for _, part := range strings.Split(list, ",") {
		id, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func timeJSON(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.Format(time.RFC3339Nano)
}

func rows(args []string) (any, error) {
	flags := flag.NewFlagSet("rows", flag.ExitOnError)
	dsn := flags.String("dsn", "", "go-sql-driver/mysql DSN")
	idList := flags.String("ids", "", "comma-separated ids")
	_ = flags.Parse(args)
	ids, err := parseIDs(*idList)
	if err != nil {
		return nil, err
	}
	db, err := open(*dsn, nil)
	if err != nil {
		return nil, err
	}
	var found []model.AgentOutboxMessage
	if err := db.Order("id").Find(&found, ids).Error; err != nil {
		return nil, err
	}
	var out []map[string]any
	for _, row := range found {
		out = append(out, map[string]any{
			"id": row.ID, "event_type": row.EventType, "topic": row.Topic,
			"message_key": row.MessageKey, "payload": row.Payload, "status": row.Status,
			"retry_count": row.RetryCount, "max_retry": row.MaxRetry,
			"next_retry_at": timeJSON(row.NextRetryAt), "last_error": row.LastError,
			"published_at": timeJSON(row.PublishedAt), "consumed_at": timeJSON(row.ConsumedAt),
			"created_at": timeJSON(row.CreatedAt), "updated_at": timeJSON(row.UpdatedAt),
		})
	}
	return out, nil
}

func mark(args []string) (any, error) {
	flags := flag.NewFlagSet("mark", flag.ExitOnError)
	dsn := flags.String("dsn", "", "go-sql-driver/mysql DSN")
	idList := flags.String("ids", "", "comma-separated ids")
	status := flags.String("status", "", "published or consumed")
	_ = flags.Parse(args)
	ids, err := parseIDs(*idList)
	if err != nil {
		return nil, err
	}
	db, err := open(*dsn, nil)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	changes := map[string]any{"status": *status}
	switch *status {
	case model.OutboxStatusPublished:
		changes["published_at"] = now
		changes["next_retry_at"] = nil
	case model.OutboxStatusConsumed:
		changes["consumed_at"] = now
	default:
		return nil, fmt.Errorf("unknown status %q", *status)
	}
	// Updates with a map also sets updated_at (autoUpdateTime), as in the service.
	result := db.Model(&model.AgentOutboxMessage{}).Where("id IN ?", ids).Updates(changes)
	return map[string]any{"updated": result.RowsAffected, "at": now.Format(time.RFC3339Nano)}, result.Error
}

// ---------------------------------------------------------------- Kafka

var codecs = map[string]kgo.CompressionCodec{
	"none":   kgo.NoCompression(),
	"gzip":   kgo.GzipCompression(),
	"snappy": kgo.SnappyCompression(),
	"lz4":    kgo.Lz4Compression(),
	"zstd":   kgo.ZstdCompression(),
}

// codecNames are the record-batch attribute values (Kafka's protocol).
var codecNames = map[uint8]string{0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}

type batchHook struct {
	mu     sync.Mutex
	codecs map[string]int
}

func (h *batchHook) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.ProduceBatchMetrics) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.codecs[codecNames[m.CompressionType]] += m.NumRecords
}

func produce(args []string) (any, error) {
	flags := flag.NewFlagSet("produce", flag.ExitOnError)
	brokers := flags.String("brokers", "", "comma-separated bootstrap servers")
	topic := flags.String("topic", "", "topic")
	codec := flags.String("codec", "", "none, gzip, snappy, lz4 or zstd; empty: franz-go's default")
	_ = flags.Parse(args)
	var records []struct {
		Key     string      `json:"key"`
		Value   string      `json:"value"`
		Headers [][2]string `json:"headers"` // name, value; none in the usual case
	}
	if err := json.NewDecoder(os.Stdin).Decode(&records); err != nil {
		return nil, err
	}
	hook := &batchHook{codecs: map[string]int{}}
	options := []kgo.Opt{kgo.SeedBrokers(strings.Split(*brokers, ",")...), kgo.WithHooks(hook)}
	if *codec != "" {
		chosen, ok := codecs[*codec]
		if !ok {
			return nil, fmt.Errorf("unknown codec %q", *codec)
		}
		options = append(options, kgo.ProducerBatchCompression(chosen))
	}
	client, err := kgo.NewClient(options...)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	batch := make([]*kgo.Record, 0, len(records))
	for _, r := range records {
		// key and value only unless told: what a Go relay or any plain producer sends
		record := &kgo.Record{Topic: *topic, Key: []byte(r.Key), Value: []byte(r.Value)}
		for _, h := range r.Headers {
			record.Headers = append(record.Headers, kgo.RecordHeader{Key: h[0], Value: []byte(h[1])})
		}
		batch = append(batch, record)
	}
	if err := client.ProduceSync(ctx, batch...).FirstErr(); err != nil {
		return nil, err
	}
	// franz-go may run the batch hook after ProduceSync's promises: wait for it to have
	// counted every record (a few ms), so the codecs reported are the whole batch's.
	return map[string]any{"produced": len(batch), "batches_by_codec": hook.counted(len(batch))}, nil
}

// counted waits (up to 5 s) until the hook saw n records, then copies its counts.
func (h *batchHook) counted(n int) map[string]int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mu.Lock()
		total := 0
		for _, c := range h.codecs {
			total += c
		}
		if total >= n || time.Now().After(deadline) {
			copied := make(map[string]int, len(h.codecs))
			for name, c := range h.codecs {
				copied[name] = c
			}
			h.mu.Unlock()
			return copied
		}
		h.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

type readRecord struct {
	Partition int32       `json:"partition"`
	Offset    int64       `json:"offset"`
	Key       string      `json:"key_b64"`
	Value     string      `json:"value_b64"`
	Headers   [][2]string `json:"headers"` // name, value base64, in record order
	Problems  []string    `json:"problems"`
}

// checkRecord is what a Go consumer of the relay's records relies on.
func checkRecord(record *kgo.Record) []string {
	problems := []string{}
	var envelope Envelope
	if err := json.Unmarshal(record.Value, &envelope); err != nil {
		return append(problems, "value is not an envelope: "+err.Error())
	}
	headers := map[string]string{}
	for _, h := range record.Headers {
		headers[h.Key] = string(h.Value)
	}
	id, err := uuid.Parse(envelope.EventID)
	if err != nil {
		problems = append(problems, "event_id is not a UUID: "+err.Error())
	} else if header, err := uuid.Parse(headers["event_id"]); err != nil || header != id {
		problems = append(problems, fmt.Sprintf("event_id header %q is not the envelope's", headers["event_id"]))
	}
	if headers["event_type"] != envelope.EventType {
		problems = append(problems, fmt.Sprintf("event_type header %q is not the envelope's", headers["event_type"]))
	}
	if string(record.Key) != envelope.Key {
		problems = append(problems, fmt.Sprintf("key %q is not the envelope's %q", record.Key, envelope.Key))
	}
	for name, value := range envelope.Headers {
		if _, reserved := map[string]bool{"event_id": true, "event_type": true, "outbox_id": true, "outbox_db": true}[name]; !reserved && headers[name] != value {
			problems = append(problems, fmt.Sprintf("envelope header %q is %q on the record", name, headers[name]))
		}
	}
	return problems
}

func read(args []string) (any, error) {
	flags := flag.NewFlagSet("read", flag.ExitOnError)
	brokers := flags.String("brokers", "", "comma-separated bootstrap servers")
	topic := flags.String("topic", "", "topic")
	count := flags.Int("count", 1, "records to read")
	timeout := flags.Duration("timeout", 60*time.Second, "give up after")
	_ = flags.Parse(args)
	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	out := []readRecord{}
	for len(out) < *count {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("read %d of %d records before the timeout", len(out), *count)
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			return nil, errs[0].Err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			headers := [][2]string{}
			for _, h := range r.Headers {
				headers = append(headers, [2]string{h.Key, base64.StdEncoding.EncodeToString(h.Value)})
			}
			out = append(out, readRecord{
				r.Partition, r.Offset,
				base64.StdEncoding.EncodeToString(r.Key),
				base64.StdEncoding.EncodeToString(r.Value),
				headers, checkRecord(r),
			})
		})
	}
	return out, nil
}

// ---------------------------------------------------------------- vectors

// vector is one entry of tests/vectors/manifest.json.
type vector struct {
	File    string `json:"file"`
	EventID string `json:"event_id"` // of a valid one, normalised
}

// loneSurrogate reports a \uD800-\uDFFF escape in a JSON text that is not half
// of a pair; encoding/json silently turns those into U+FFFD, the contract rejects them.
func loneSurrogate(raw []byte) bool {
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+5 < len(raw) && raw[i+1] == 'u' {
				code, err := strconv.ParseUint(string(raw[i+2:i+6]), 16, 16)
				if err == nil && code >= 0xD800 && code <= 0xDFFF {
					if code >= 0xDC00 {
						return true // a low half first
					}
					if i+11 >= len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
						return true
					}
					low, err := strconv.ParseUint(string(raw[i+8:i+12]), 16, 16)
					if err != nil || low < 0xDC00 || low > 0xDFFF {
						return true
					}
					i += 6
				}
				i += 5
			} else {
				i++
			}
		}
	}
	return false
}

func vectors(args []string) (any, error) {
	flags := flag.NewFlagSet("vectors", flag.ExitOnError)
	schemaFile := flags.String("schema", "", "docs/envelope.schema.json")
	manifestFile := flags.String("manifest", "", "tests/vectors/manifest.json")
	_ = flags.Parse(args)
	compiler := jsonschema.NewCompiler()
	compiler.AssertFormat()
	schema, err := compiler.Compile(*schemaFile)
	if err != nil {
		return nil, err
	}
	manifestRaw, err := os.ReadFile(*manifestFile)
	if err != nil {
		return nil, err
	}
	var manifest []vector
	if err := json.Unmarshal(manifestRaw, &manifest); err != nil {
		return nil, err
	}
	type verdict struct {
		File  string `json:"file"`
		Valid bool   `json:"valid"` // the schema and the Go service's decoding accept it
		Error string `json:"error"`
	}
	out := []verdict{}
	for _, v := range manifest {
		raw, err := os.ReadFile(filepath.Join(filepath.Dir(*manifestFile), v.File))
		if err != nil {
			return nil, err
		}
		problem := ""
		if loneSurrogate(raw) {
			problem = "lone surrogate"
		} else if document, err := jsonschema.UnmarshalJSON(strings.NewReader(string(raw))); err != nil {
			problem = "not JSON: " + err.Error()
		} else if err := schema.Validate(document); err != nil {
			problem = strings.ReplaceAll(err.Error(), "\n", " ")
		} else if envelope, err := decodeEnvelope(raw); err != nil {
			problem = err.Error()
		} else if id := uuid.MustParse(envelope.EventID).String(); id != v.EventID {
			problem = fmt.Sprintf("event_id reads as %s, the manifest says %s", id, v.EventID)
		}
		out = append(out, verdict{v.File, problem == "", problem})
	}
	return out, nil
}

// decodeEnvelope is how the Go service reads an envelope.
func decodeEnvelope(raw []byte) (*Envelope, error) {
	var envelope Envelope
	decoder := json.NewDecoder(strings.NewReader(string(raw)))
	if err := decoder.Decode(&envelope); err != nil {
		return nil, err
	}
	if _, err := decoder.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the envelope")
	}
	if _, err := uuid.Parse(envelope.EventID); err != nil {
		return nil, err
	}
	return &envelope, nil
}
