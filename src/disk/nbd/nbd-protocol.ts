// Every NBD wire constant and fixed layout we use, in one place (after nbd's doc/proto.md).
// All integers on the wire are big-endian.
//
// Fixed newstyle handshake, as we speak it:
//
//   server                                   client
//     | "NBDMAGIC" "IHAVEOPT" u16 hflags        |
//     |---------------------------------------->|
//     |                 u32 client flags        |
//     |<----------------------------------------|
//     |   ( "IHAVEOPT" u32 opt u32 len data )*  |   options, one at a time
//     |<----------------------------------------|
//     |   ( REPLY_MAGIC u32 opt u32 type        |   one or more replies per option
//     |     u32 len data )*                     |
//     |---------------------------------------->|
//   ...until OPT_GO (ACK) or OPT_EXPORT_NAME (size, flags): transmission phase:
//     |  REQUEST_MAGIC u16 flags u16 type       |
//     |  u64 cookie u64 offset u32 length [data]|   pipelined, any number in flight
//     |<----------------------------------------|
//     |  SIMPLE_REPLY_MAGIC u32 error u64 cookie|   in completion order, [data] for READ
//     |---------------------------------------->|

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

export const HandshakeFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const CmdFlag = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3, FAST_ZERO: 1 << 4 } as const;

/** The command flags each command accepts from us; anything else is EINVAL. */
export const allowedCmdFlags: Record<number, number> = {
  [Cmd.READ]: 0,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.DISC]: 0,
  [Cmd.FLUSH]: 0,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE,
};

/** Structured replies (NBD_OPT_STRUCTURED_REPLY): chunks, the last one flagged DONE. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const STRUCTURED_REPLY_HEADER_LEN = 20;
export const ReplyFlag = { DONE: 1 } as const;
export const ReplyType = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769, ERROR_OFFSET: 32770 } as const;
/** The one metadata context we serve, and its flags. */
export const BASE_ALLOCATION = "base:allocation";
export const AllocationState = { HOLE: 1, ZERO: 2 } as const;

export { NbdErr } from "../block/vocabulary.ts";

export const HANDSHAKE_LEN = 18; // NBDMAGIC + IHAVEOPT + u16
export const OPTION_HEADER_LEN = 16; // IHAVEOPT + u32 opt + u32 len
export const REQUEST_HEADER_LEN = 28;
export const SIMPLE_REPLY_LEN = 16;

/** Limits we advertise with NBD_INFO_BLOCK_SIZE and enforce. */
export const BLOCK_MIN = 1;
export const BLOCK_PREFERRED = 4096;
export const BLOCK_MAX = 32 * 1024 * 1024;
/** The smallest maximum a serve may advertise: the preferred size, so that no client's natural request is refused. */
export const BLOCK_MAX_FLOOR = 64 * 1024;
/** An option's payload is small (an export name, a few info requests); more is hostile. */
export const OPTION_MAX_LEN = 64 * 1024;

export function cmdName(type: number): string {
  for (const [name, value] of Object.entries(Cmd)) if (value === type) return name;
  return `unknown(${type})`;
}

export function optName(opt: number): string {
  for (const [name, value] of Object.entries(Opt)) if (value === opt) return name;
  return `unknown(${opt})`;
}
