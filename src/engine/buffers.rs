//! A SPIR-V pair's written buffers as an answer carries them ([`Buffers`]).
//!
//! Small outputs travel inline, in the answer itself: a tiny batch's answer then needs
//! no allocation on the worker that builds it and no `free` on the caller that drops
//! it. Freeing what another thread allocated is what made a tiny batch's answer
//! expensive: with glibc's malloc the block goes back to the worker's arena from the
//! caller's core (past the caller's small per-thread cache, under the arena's lock, on
//! lines the worker's next allocation then pulls back). On the H200 host's 16 workers,
//! answering without the output's two blocks took 15–30 % off `engine_overhead`'s
//! time per batch (docs/journal/2026-11-22-h200-15-inline-answers.md). Larger outputs
//! keep the backend's vectors, whose allocation their size amortises.

use std::fmt;
use std::ops::Index;

/// The most bytes, all buffers together, that an answer holds inline.
pub const INLINE_OUTPUT_BYTES: usize = 24;
/// The most buffers an answer holds inline.
pub const INLINE_OUTPUT_BUFFERS: usize = 4;

/// The written buffers of a SPIR-V pair's dispatch, in binding order.
///
/// Up to [`INLINE_OUTPUT_BUFFERS`] buffers of at most [`INLINE_OUTPUT_BYTES`] bytes in
/// all are held inline (no heap allocation); larger outputs as the vectors the backend
/// returned. Either way it reads the same: index it, [`get`](Self::get) or
/// [`iter`](Self::iter) for `&[u8]`, or take the vectors with
/// [`into_vecs`](Self::into_vecs). Two `Buffers` are equal when their contents are.
///
/// ```
/// use photofinish::Buffers;
///
/// let small = Buffers::from(vec![vec![1, 2, 3, 4]]);
/// assert!(small.is_inline());
/// assert_eq!(&small[0], &[1, 2, 3, 4]);
/// let large = Buffers::from(vec![vec![7u8; 4096]]);
/// assert!(!large.is_inline());
/// assert_eq!(large.get(0).map(<[u8]>::len), Some(4096));
/// assert_eq!(small.into_vecs(), vec![vec![1, 2, 3, 4]]);
/// ```
#[derive(Clone)]
pub struct Buffers(Repr);

#[derive(Clone)]
enum Repr {
    /// `count` buffers; buffer `i` is `bytes[ends[i - 1]..ends[i]]` (from 0 for the
    /// first).
    Inline {
        count: u8,
        ends: [u8; INLINE_OUTPUT_BUFFERS],
        bytes: [u8; INLINE_OUTPUT_BYTES],
    },
    Heap(Vec<Vec<u8>>),
}

impl Buffers {
    /// How many buffers.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Inline { count, .. } => usize::from(*count),
            Repr::Heap(buffers) => buffers.len(),
        }
    }

    /// True when there are no buffers (a kernel that writes no binding).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buffer `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        match &self.0 {
            Repr::Inline { count, ends, bytes } => {
                if i >= usize::from(*count) {
                    return None;
                }
                let start = if i == 0 { 0 } else { usize::from(ends[i - 1]) };
                bytes.get(start..usize::from(ends[i]))
            }
            Repr::Heap(buffers) => buffers.get(i).map(Vec::as_slice),
        }
    }

    /// The first buffer, if there is one.
    pub fn first(&self) -> Option<&[u8]> {
        self.get(0)
    }

    /// Buffer `i` as elements of a `Pod` type (bytemuck): borrowed where its bytes are
    /// aligned for `T`, copied where not (an inline buffer, say). `None` when there is
    /// no buffer `i` or its length is not a whole number of `T`s.
    ///
    /// ```
    /// use photofinish::Buffers;
    ///
    /// let answer = Buffers::from(vec![[1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect()]);
    /// assert_eq!(answer.view::<f32>(0).as_deref(), Some(&[1.5f32, -2.0][..]));
    /// assert!(answer.view::<f64>(0).is_some() && answer.view::<[u8; 3]>(0).is_none());
    /// ```
    pub fn view<T: bytemuck::Pod>(&self, i: usize) -> Option<std::borrow::Cow<'_, [T]>> {
        let bytes = self.get(i)?;
        let size = std::mem::size_of::<T>();
        if size == 0 || bytes.len() % size != 0 {
            return None;
        }
        Some(match bytemuck::try_cast_slice(bytes) {
            Ok(elements) => std::borrow::Cow::Borrowed(elements),
            Err(_) => std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(size)
                    .map(bytemuck::pod_read_unaligned)
                    .collect(),
            ),
        })
    }

    /// The buffers in binding order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            buffers: self,
            next: 0,
        }
    }

    /// True when the buffers are held inline (see the type's docs).
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }

    /// The buffers as vectors (no copy when they are not inline).
    pub fn into_vecs(self) -> Vec<Vec<u8>> {
        match self.0 {
            Repr::Heap(buffers) => buffers,
            Repr::Inline { .. } => self.iter().map(<[u8]>::to_vec).collect(),
        }
    }
}

impl From<Vec<Vec<u8>>> for Buffers {
    /// Holds `buffers` inline when they are small enough (and frees their vectors),
    /// keeps the vectors otherwise.
    fn from(buffers: Vec<Vec<u8>>) -> Self {
        let total: usize = buffers.iter().map(Vec::len).sum();
        if buffers.len() > INLINE_OUTPUT_BUFFERS || total > INLINE_OUTPUT_BYTES {
            return Buffers(Repr::Heap(buffers));
        }
        let mut ends = [0u8; INLINE_OUTPUT_BUFFERS];
        let mut bytes = [0u8; INLINE_OUTPUT_BYTES];
        let mut end = 0;
        for (i, buffer) in buffers.iter().enumerate() {
            bytes[end..end + buffer.len()].copy_from_slice(buffer);
            end += buffer.len();
            // `end` ≤ INLINE_OUTPUT_BYTES, which fits a byte.
            ends[i] = end as u8;
        }
        Buffers(Repr::Inline {
            count: buffers.len() as u8,
            ends,
            bytes,
        })
    }
}

impl Index<usize> for Buffers {
    type Output = [u8];

    /// Buffer `i`; panics when there is none, as a slice's index does.
    fn index(&self, i: usize) -> &[u8] {
        match self.get(i) {
            Some(buffer) => buffer,
            None => panic!("buffer {i} of {}", self.len()),
        }
    }
}

impl PartialEq for Buffers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Buffers {}

impl PartialEq<Vec<Vec<u8>>> for Buffers {
    fn eq(&self, other: &Vec<Vec<u8>>) -> bool {
        self.iter().eq(other.iter().map(Vec::as_slice))
    }
}

impl fmt::Debug for Buffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Buffers {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The buffers of a [`Buffers`], in binding order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    buffers: &'a Buffers,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let buffer = self.buffers.get(self.next)?;
        self.next += 1;
        Some(buffer)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.buffers.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_outputs_are_inline_and_read_back_whole() {
        let vecs = vec![vec![1, 2, 3], Vec::new(), vec![4; 20], vec![9]];
        assert_eq!(
            vecs.iter().map(Vec::len).sum::<usize>(),
            INLINE_OUTPUT_BYTES
        );
        let buffers = Buffers::from(vecs.clone());
        assert!(buffers.is_inline());
        assert_eq!(buffers.len(), 4);
        assert_eq!(buffers, vecs);
        assert_eq!(&buffers[1], &[] as &[u8]);
        assert_eq!(buffers.get(3), Some(&[9u8][..]));
        assert_eq!(buffers.get(4), None);
        assert_eq!(buffers.iter().len(), 4);
        assert_eq!(buffers.clone().into_vecs(), vecs);
        assert_eq!(format!("{buffers:?}"), format!("{:?}", vecs));
    }

    #[test]
    fn outputs_past_either_bound_keep_their_vectors() {
        let too_many = vec![vec![1]; INLINE_OUTPUT_BUFFERS + 1];
        let too_long = vec![vec![2; INLINE_OUTPUT_BYTES - 1], vec![3, 4]];
        for vecs in [too_many, too_long] {
            let buffers = Buffers::from(vecs.clone());
            assert!(!buffers.is_inline());
            assert_eq!(buffers, vecs);
            assert_eq!(buffers.into_vecs(), vecs);
        }
    }

    #[test]
    fn no_buffers_and_equality_across_forms() {
        let none = Buffers::from(Vec::new());
        assert!(none.is_empty() && none.is_inline());
        assert_eq!(none.first(), None);
        let inline = Buffers::from(vec![vec![5; 8]]);
        let heap = Buffers(Repr::Heap(vec![vec![5; 8]]));
        assert_eq!(inline, heap);
        assert_ne!(inline, Buffers::from(vec![vec![5; 7]]));
        assert_ne!(inline, Buffers::from(vec![vec![5; 4], vec![5; 4]]));
    }

    #[test]
    #[should_panic(expected = "buffer 1 of 1")]
    fn indexing_past_the_end_panics_like_a_slice() {
        let _ = &Buffers::from(vec![vec![1]])[1];
    }

    #[test]
    fn an_answer_is_no_larger_for_holding_them() {
        // Inline bytes must not grow the ticket slot an answer travels in.
        assert!(std::mem::size_of::<Buffers>() <= 32);
    }
}
