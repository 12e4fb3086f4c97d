// The block path's own words, which every room speaks: the error values a failed operation
// carries (NBD's: the client sees them as they are) and a run of data or hole. They live
// here, below the NBD server and the image, so that the block path imports neither.

/** NBD error values (they are the Linux errno numbers, but NBD fixes them itself). */
export const NbdErr = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** A run of the image: data, or a hole that reads as zeros. */
export interface Extent {
  length: number;
  hole: boolean;
}
